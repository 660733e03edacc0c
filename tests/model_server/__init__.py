"""A scripted model server for running the real agent CLIs offline (tests only; not shipped).

It speaks Anthropic Messages, OpenAI Responses, OpenAI Chat Completions and the Gemini API, streaming, on loopback;
a test gives it a :class:`Script` of turns and reads back every request it :attr:`~ModelServer.requests`.
"""

from tests.model_server.script import Conversation, Dynamic, Error, Script, Text, ToolCall
from tests.model_server.server import ModelServer, Recorded

__all__ = ["Conversation", "Dynamic", "Error", "ModelServer", "Recorded", "Script", "Text", "ToolCall"]
