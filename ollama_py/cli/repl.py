"""The interactive `ollama-py run`: a chat at a `>>> ` prompt, with Ollama's slash commands.

Input comes through GNU readline (line editing, Ctrl-R, history kept in
~/.ollama/history as Ollama keeps it). The conversation is kept here and sent
whole to /api/chat each turn; the server prepends the Modelfile's SYSTEM and
MESSAGEs. Ctrl-C while the model answers stops that answer (the partial
answer stays in the conversation, so the next question has its context);
Ctrl-C at the prompt clears the line; Ctrl-D or /bye leaves.
"""

from __future__ import annotations

import logging
import readline
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from ollama_py.api.native import (ChatRequest, ChatResponse, CreateRequest, ListResponse, Message,
                                  ProgressResponse, ShowResponse)
from ollama_py.api.options import Duration, Format, Options as ApiOptions, Think, from_parameters
from ollama_py.cli import answer as answers
from ollama_py.cli import format as fmt
from ollama_py.cli import models
from ollama_py.cli.client import Client, ClientError, ResponseError
from ollama_py.store.modelfile import ParamValue, convert_parameter

log = logging.getLogger(__name__)

PROMPT = ">>> "
CONTINUATION = "... "
MULTILINE = '"""'
HISTORY = Path.home() / ".ollama" / "history"

USAGE = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /list           List models
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message.
"""
USAGE_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set history           Enable history
  /set nohistory         Disable history
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set think             Enable thinking
  /set nothink           Disable thinking
"""
USAGE_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""
USAGE_PARAMETERS = """Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter num_gpu <int>          The number of layers to send to the GPU
  /set parameter stop <string> <string> ...   Set the stop parameters
"""
USAGE_SHORTCUTS = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
   Alt + b            Move back (left) one word
   Alt + f            Move forward (right) one word
  Ctrl + k            Delete the sentence after the cursor
  Ctrl + u            Delete the sentence before the cursor
  Ctrl + w            Delete the word before the cursor

  Ctrl + l            Clear the screen
  Ctrl + r            Search the history
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit ollama-py (/bye)
"""


@dataclass
class Options:
    """What the session sends with every turn; `run`'s flags set it, /set commands change it."""

    model: str
    format: Format | None = None
    keep_alive: Duration | None = None
    think: Think | None = None
    verbose: bool = False
    hide_thinking: bool = False
    wordwrap: bool = True
    system: str | None = None
    parameters: dict[str, ParamValue] = field(default_factory=dict)

    def chat_request(self, messages: list[Message]) -> ChatRequest:
        return ChatRequest(model=self.model, messages=messages, format=self.format, keep_alive=self.keep_alive,
                           think=self.think, options=self.api_options())

    def api_options(self) -> ApiOptions | None:
        return from_parameters(self.parameters) if self.parameters else None


def _say(text: str) -> None:
    print(text, flush=True)


def _go_value(value: ParamValue) -> str:
    """A parameter as Go's %v prints it (0 not 0.0, [a b] for a list), as Ollama shows them."""
    if isinstance(value, list):
        return "[" + " ".join(value) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).lower() if isinstance(value, bool) else str(value)


class Repl:
    """One interactive session with a model."""

    def __init__(self, client: Client, options: Options, info: ShowResponse, *, nohistory: bool) -> None:
        self.client = client
        self.options = options
        self.info = info
        self.messages: list[Message] = []
        self.history = not nohistory
        self._commands: dict[str, Callable[[list[str]], bool]] = {
            "/set": self._set, "/show": self._show, "/load": self._load, "/save": self._save,
            "/clear": self._clear, "/list": self._list, "/bye": self._bye, "/exit": self._bye,
            "/?": self._help, "/help": self._help,
        }

    # --- the loop ---------------------------------------------------------------------------------------

    def loop(self) -> None:
        """Reads and answers until /bye or Ctrl-D."""
        # Ctrl-C is how a user stops an answer or clears the line, even in a chat started where SIGINT is
        # ignored (a job started with & from a shell without job control), where Python leaves it ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self._start_history()
        self._preload()
        for message in self.info.messages or []:
            if message.role == "user":
                _say(f"{PROMPT}{message.content}")
            elif message.role == "assistant":
                _say(f"{message.content}\n")
        while True:
            try:
                if not self._turn():
                    return
            except EOFError:
                print()
                return
            except KeyboardInterrupt:
                _say("\nUse Ctrl + d or /bye to exit.")

    def _turn(self) -> bool:
        """Reads one input and acts on it: a slash command, or a message (a line, or lines between
        \"\"\" and \"\"\", which is never a command); False when the session should end."""
        line = self._input(PROMPT)
        if line.startswith(MULTILINE):
            text = line[len(MULTILINE):]
            text = text[:-len(MULTILINE)] if text.endswith(MULTILINE) else self._until_closed(text)
        elif line.lstrip().startswith("/"):
            return self._command(line.strip())
        else:
            text = line
        if text.strip():
            self.ask(text.strip())
        return True

    def _until_closed(self, first: str) -> str:
        """Reads `... ` lines until one ends with \"\"\"; the text between, newlines kept."""
        lines = [first] if first else []
        while not (line := self._input(CONTINUATION)).endswith(MULTILINE):
            lines.append(line)
        lines.append(line[:-len(MULTILINE)])
        return "\n".join(lines)

    def _input(self, prompt: str) -> str:
        line = input(prompt)
        if self.history and line.strip():
            try:
                readline.append_history_file(1, HISTORY)
            except OSError as exc:
                log.debug("history not saved: %s", exc)
        return line

    def _start_history(self) -> None:
        if not self.history:
            return
        try:
            HISTORY.parent.mkdir(parents=True, exist_ok=True)
            HISTORY.touch(exist_ok=True)
            readline.read_history_file(HISTORY)
        except OSError as exc:
            log.debug("no history: %s", exc)

    # --- talking to the model ---------------------------------------------------------------------------

    def _preload(self) -> None:
        """Loads the model before the first prompt (a chat without messages), with a spinner."""
        request = ChatRequest(model=self.options.model, keep_alive=self.options.keep_alive)
        answers.show(self.client.stream("/api/chat", request, type=ChatResponse), answers.chat_parts)

    def ask(self, text: str) -> None:
        """Sends the conversation with `text` added and shows the answer as it streams."""
        self.messages.append(Message(role="user", content=text))
        try:
            said = answers.show(
                self.client.stream("/api/chat", self.options.chat_request(self.messages), type=ChatResponse),
                answers.chat_parts, hide_thinking=self.options.hide_thinking, wrap=self.options.wordwrap)
        except ClientError as exc:
            self.messages.pop()
            print(f"Error: {exc}", file=sys.stderr, flush=True)
            return
        print("\n", flush=True)
        if said.content or said.thinking:
            self.messages.append(Message(role="assistant", content=said.content, thinking=said.thinking))
        else:
            self.messages.pop()
        if self.options.verbose and said.metrics is not None:
            print(fmt.summary(said.metrics) + "\n", file=sys.stderr, flush=True)

    # --- slash commands: each returns False to leave the loop --------------------------------------------

    def _command(self, text: str) -> bool:
        args = text.split()
        handler = self._commands.get(args[0])
        if handler is None:
            _say(f"Unknown command '{args[0]}'. Type /? for help")
            return True
        return handler(args)

    def _set(self, args: list[str]) -> bool:
        if len(args) < 2:
            print(USAGE_SET)
            return True
        what, rest = args[1], args[2:]
        o = self.options
        match what:
            case "parameter":
                self._set_parameter(rest)
            case "system":
                self._set_system(" ".join(rest))
            case "history" | "nohistory":
                self.history = what == "history"
            case "wordwrap" | "nowordwrap":
                o.wordwrap = what == "wordwrap"
                _say(f"Set '{what}' mode.")
            case "format" if rest == ["json"]:
                o.format = "json"
                _say("Set format to 'json' mode.")
            case "format":
                _say("Invalid or missing format. For 'json' mode use '/set format json'")
            case "noformat":
                o.format = None
                _say("Disabled format.")
            case "verbose" | "quiet":
                o.verbose = what == "verbose"
                _say(f"Set '{what}' mode.")
            case "think":
                try:
                    o.think = answers.think_value(rest[0]) if rest else True
                except ValueError as exc:
                    _say(f"error: {exc}")
                    return True
                _say(f"Set 'think' mode to '{rest[0]}'." if rest else "Set 'think' mode.")
            case "nothink":
                o.think = False
                _say("Set 'nothink' mode.")
            case _:
                _say(f"Unknown command '/set {what}'. Type /? for help")
        return True

    def _set_parameter(self, rest: list[str]) -> None:
        if len(rest) < 2:
            print(USAGE_PARAMETERS)
            return
        name, values = rest[0], rest[1:]
        try:
            value: ParamValue = convert_parameter(name, values[0])
            if isinstance(value, list):
                value = [item for v in values for item in convert_parameter(name, v)]  # type: ignore[union-attr]
            from_parameters({**self.options.parameters, name: value})
        except (ValueError, msgspec.ValidationError) as exc:
            _say(f"Couldn't set parameter: {exc}")
            return
        self.options.parameters[name] = value
        _say(f"Set parameter '{name}' to '{', '.join(values)}'")

    def _set_system(self, text: str) -> None:
        if not text:
            print(USAGE_SET)
            return
        if text.startswith(MULTILINE):
            text = text[len(MULTILINE):]
            text = text[:-len(MULTILINE)] if text.endswith(MULTILINE) else self._until_closed(text).strip("\n")
        self.options.system = text
        message = Message(role="system", content=text)
        if self.messages and self.messages[-1].role == "system":
            self.messages[-1] = message
        else:
            self.messages.append(message)
        _say("Set system message.")

    def _show(self, args: list[str]) -> bool:
        if len(args) < 2:
            print(USAGE_SHOW)
            return True
        try:
            info = models.show(self.client, self.options.model)
        except ClientError as exc:
            _say(f"error: couldn't get model: {exc}")
            return True
        match args[1]:
            case "info":
                print(fmt.model_info(info))
            case "license":
                _say(info.license or "No license was specified for this model.")
            case "modelfile":
                _say(info.modelfile)
            case "parameters":
                self._show_parameters(info)
            case "system":
                system = self.options.system or info.system
                _say(f"{system}\n" if system else "No system message was specified for this model.")
            case "template":
                _say(info.template or "No prompt template was specified for this model.")
            case _:
                _say(f"Unknown command '/show {args[1]}'. Type /? for help")
        return True

    def _show_parameters(self, info: ShowResponse) -> None:
        _say("Model defined parameters:")
        lines = [line for line in info.parameters.splitlines() if line.strip()]
        _say("\n".join(f"  {line}" for line in lines) if lines else
             "  No additional parameters were specified for this model.")
        print()
        if self.options.parameters:
            _say("User defined parameters:")
            for name, value in self.options.parameters.items():
                _say(f"  {name:<30} {_go_value(value)}")
            print()

    def _load(self, args: list[str]) -> bool:
        if len(args) != 2:
            _say("Usage:\n  /load <modelname>")
            return True
        try:
            info = models.show(self.client, args[1])
        except ResponseError as exc:
            if exc.status != 404:
                raise
            _say(f"Couldn't find model '{args[1]}'")
            return True
        _say(f"Loading model '{args[1]}'")
        self.options.model = args[1]
        self.info = info
        self.messages = []
        self._preload()
        return True

    def _save(self, args: list[str]) -> bool:
        if len(args) != 2:
            _say("Usage:\n  /save <modelname>")
            return True
        o = self.options
        request = CreateRequest(model=args[1], from_=o.model, system=o.system, parameters=o.parameters or None,
                                messages=self.messages or None)
        try:
            for _ in self.client.stream("/api/create", request, type=ProgressResponse):
                pass
        except ResponseError as exc:
            _say(f"error: {exc}")
            return True
        _say(f"Created new model '{args[1]}'")
        return True

    def _clear(self, _args: list[str]) -> bool:
        system = self.options.system
        self.messages = [Message(role="system", content=system)] if system else []
        _say("Cleared session context")
        return True

    def _list(self, args: list[str]) -> bool:
        listed = self.client.call("GET", "/api/tags", type=ListResponse).models
        _say(fmt.models_table(listed, args[1] if len(args) > 1 else None))
        return True

    def _bye(self, _args: list[str]) -> bool:
        return False

    def _help(self, args: list[str]) -> bool:
        topic = args[1].lstrip("/") if len(args) > 1 else ""
        print({"set": USAGE_SET, "show": USAGE_SHOW, "shortcut": USAGE_SHORTCUTS,
               "shortcuts": USAGE_SHORTCUTS}.get(topic, USAGE), file=sys.stderr)
        return True
