"""Records, arguments and the effect spec: the data every layer shares."""
