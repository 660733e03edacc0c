"""Several servers on one journal: ownership, sessions and requests between them."""
