"""The requests Open-WebUI sends to an Ollama-compatible server, as captured from its traffic.

Captured from open-webui==0.12.4 (PyPI) run against `ollama-py serve` through a logging proxy,
with its defaults: WEBUI_AUTH=False, one Ollama connection (OLLAMA_BASE_URL) and one OpenAI
connection (OPENAI_API_BASE_URL=<server>/v1, OPENAI_API_KEY=x), driven in headless Chromium
(pick smollm2:135m, type a message, regenerate) and through its admin API (pull, create, delete,
unload, embed). What it sent, by what the user did:

- the model list: GET /api/tags then GET /api/ps (it reads `expires_at` with
  datetime.fromisoformat) on the Ollama connection; GET /v1/models with `Authorization: Bearer
  <key>` on the OpenAI one; GET /api/version when an admin opens the connection settings (it
  parses the version as dotted integers).
- a chat typed in the UI: model, messages, stream: true and the 36 built-in tools below, on either
  connection alike; no options, keep_alive, system message, max_tokens or stream_options by default.
  Regenerate ("Try Again") sends the same body again. Stop closes the connection mid-stream.
- after the first answer, background tasks, non-streamed, one user message each: title
  (`options: {num_predict: 1000}` / `max_tokens: 1000`), follow-ups and tags (no limit at all).
- admin: POST /api/pull {name, model, insecure: true}; POST /api/create {model, stream, from,
  system}; DELETE /api/delete {model}; unload is POST /api/generate {model, keep_alive: 0,
  prompt: ""}; retrieval embeds with POST /api/embed {input: [...], model, truncate: true}
  (open_webui/retrieval/utils.py).

The bodies' shape is as captured. The prose inside them is not: every tool and parameter
description, and the title task's prompt, is paraphrased here in our own words, of about the same
length, so the requests keep their structure (the same 36 tool names, parameter names, types,
defaults, enums, required lists and nesting) and roughly the same prompt size without carrying
Open-WebUI's text.

Where the source lies: open_webui/utils/middleware.py adds the built-in tools (get_builtin_tools in
utils/tools.py, specs from the docstrings in tools/builtin.py) to chats that come from the UI;
utils/payload.py converts the OpenAI-shaped body to Ollama's; routers/tasks.py builds the tasks;
routers/ollama.py and routers/openai.py forward them.
"""

from __future__ import annotations

from typing import Any

MODEL = "smollm2:135m"
OPENAI_HEADERS = {"Authorization": "Bearer x"}  # the OPENAI_API_KEY of the connection, sent as is

FIRST_MESSAGE = [{"role": "user", "content": "Say hello in five words."}]


# ---- the built-in tools -------------------------------------------------------------------------
# Each parameter is a JSON-schema fragment; dicts are keyed in the order Open-WebUI sends them
# (alphabetical below `parameters`, parameters themselves in signature order).


def _sorted(schema: dict[str, Any]) -> dict[str, Any]:
    """Keys sorted at every level, except the parameter names under `properties`, kept in order."""
    out: dict[str, Any] = {}
    for key in sorted(schema):
        value = schema[key]
        if key == "properties":
            value = {name: _sorted(prop) for name, prop in value.items()}
        elif isinstance(value, dict):
            value = _sorted(value)
        out[key] = value
    return out


def _param(type_: str, description: str | None = None, **schema: Any) -> dict[str, Any]:
    return {"type": type_, **({"description": description} if description is not None else {}), **schema}


def _str(description: str, **schema: Any) -> dict[str, Any]:
    return _param("string", description, **schema)


def _int(description: str, **schema: Any) -> dict[str, Any]:
    return _param("integer", description, **schema)


def _bool(description: str, **schema: Any) -> dict[str, Any]:
    return _param("boolean", description, **schema)


def _objects(description: str) -> dict[str, Any]:
    """An array of free-form objects."""
    return _param("array", description, items={"additionalProperties": True, "type": "object"})


def _tool(name: str, description: str, params: dict[str, dict[str, Any]],
          required: tuple[str, ...] = ()) -> dict[str, Any]:
    parameters: dict[str, Any] = {"properties": params, "type": "object"}
    if required:
        parameters["required"] = list(required)
    return {"type": "function",
            "function": {"name": name, "description": description, "parameters": _sorted(parameters)}}


_KIND = 'Kind: "user", "context" or "all"'
_PAGE_SKIP = "How many results to pass over first, for paging (default: 0)"
_MOST_5 = "The most results to send back (default: 5)"
_MEMORY_PATH = "Optional fixed address that groups related memories"
_FORGETTABLE = ("Do not keep passing details such as one errand, a meal, an ordinary day or a passing mood\n"
                "unless the user asks for them to be remembered.")

# The built-in tools of a chat typed in the UI, the same list on both connections (36 of them with
# the default features; the tools' text alone makes a prompt of about 6,400 tokens
# with the default model's template).
BUILTIN_TOOLS: list[dict[str, Any]] = [
    _tool("get_current_timestamp", "Return the time now as Unix seconds.", {}),
    _tool("calculate_timestamp",
          "Return the Unix timestamp for now, optionally moved back by days, weeks, months or years.\n"
          "Use it to work out timestamps for the date filters of the search tools.\n"
          'For instance: "a week back" is weeks_ago=1, "three days earlier" is days_ago=3, "last year" is '
          "years_ago=1",
          {"days_ago": _int("How many days to go back from the present (default: 0)", default=0),
           "weeks_ago": _int("How many weeks to go back from the present (default: 0)", default=0),
           "months_ago": _int("How many months to go back from the present (default: 0)", default=0),
           "years_ago": _int("How many years to go back from the present (default: 0)", default=0)}),
    _tool("ask_user",
          "Put clarifying questions to the user before going on.\n"
          "Call it when the next step hinges on the user's wishes, tastes or a trade-off that cannot be safely "
          "guessed.",
          {"questions": _objects("1-3 question objects, each with an id, a header, the question and 2-3 options; "
                                 "each option has a label and a description.\n"
                                 "Put the option you favour first: the UI marks the first one Recommended."),
           "allow_other": _bool("Whether the user may type an answer of their own rather than pick one of "
                                "the options", default=True),
           "timeout_ms": _int("How long the browser leaves the question open before it gives up on it",
                              default=120000)},
          ("questions",)),
    _tool("list_knowledge_bases",
          "List the knowledge bases this user can reach, so that a fitting internal source\n"
          "can be picked.",
          {"count": _int("The most knowledge bases to list (default: 10)", default=10),
           "skip": _int(_PAGE_SKIP, default=0)}),
    _tool("search_knowledge_bases",
          "Look through the knowledge bases this user can reach, by name and description, for\n"
          "an internal source that fits.",
          {"query": _str("Text to match against the names and descriptions"),
           "count": _int(_MOST_5, default=5),
           "skip": _int(_PAGE_SKIP, default=0)},
          ("query",)),
    _tool("query_knowledge_bases",
          "Find knowledge bases close in meaning to the query.\n"
          "Matches KB names and descriptions by sense, not by words.\n"
          "Useful to learn which knowledge base is worth searching next.",
          {"query": _str("A plain-language account of what you are trying to find"),
           "count": _int("The most results (default: 5)", default=5)},
          ("query",)),
    _tool("grep_knowledge_files",
          "Find literal text in knowledge files; returns the matching lines with their numbers.\n"
          "Where query_knowledge_files searches by meaning (vectors), this matches strings exactly.\n"
          'Patterns that look like regexes (say "fail|error" or "v\\d+\\.\\d+") are used as such.\n'
          "Regexes follow RE2: no lookahead, lookbehind or backreferences, and classes such as \\d or \\w "
          "match ASCII only.\n"
          "Good for exact strings, identifiers, error text, or regex searches.",
          {"pattern": _str("The text to look for (used as a regex when it looks like one)"),
           "file_id": _str("Optional ID of the one file to confine the search to"),
           "case_insensitive": _bool("When true, case does not matter (default: false)",
                                     default=False),
           "count_only": _bool("When true, return only the match count of each file (default: false)",
                               default=False)},
          ("pattern",)),
    _tool("search_knowledge_files",
          "Find files by their names in the knowledge bases this user can reach.\n"
          "If the model has knowledge attached, only the attached KBs and files are searched.\n"
          "Useful when you are after one particular document or file name.",
          {"query": _str("The text to match against the names of files"),
           "knowledge_id": _str("Optional ID of the one knowledge base to confine the search to"),
           "count": _int(_MOST_5, default=5),
           "skip": _int(_PAGE_SKIP, default=0)},
          ("query",)),
    _tool("query_knowledge_files",
          "Search what knowledge files say by meaning (a vector search), over the collections (KBs),\n"
          "single files and notes this user can reach.\n"
          "Useful for in-house documents, uploaded material, and the knowledge attached to a model.",
          {"query": _str("The text to look for, matched by what it means"),
           "knowledge_ids": _param("array", "Optional IDs of the knowledge bases to confine the search to",
                                   items={"type": "string"}),
           "count": _int(_MOST_5, default=5)},
          ("query",)),
    _tool("view_knowledge_file",
          "Read what a file in a knowledge base contains, a part at a time when the file is big.",
          {"file_id": _str("The ID of the file to read"),
           "offset": _int("The character position to begin reading at (default: 0)", default=0),
           "max_chars": _int("The most characters to return (the server caps it as well)",
                             default=10000),
           "line_numbers": _bool("When true, begin each line with its number, counting from 1", default=False),
           "start_line": _int("Optional first line to read, counting from 1 (wins over offset/max_chars)"),
           "end_line": _int("Optional last line to read, from 1, inclusive (reads from line 1 if no start line "
                            "is set)")},
          ("file_id",)),
    _tool("search_chats",
          "Look through the user's earlier conversations, by their titles and the text of their messages,\n"
          "leaving out the current one. Useful to recover something said in a past\n"
          "conversation that is not already in front of you in this one.\n"
          "An exact phrase matches best, though a few descriptive keywords\n"
          "work as well.",
          {"query": _str("An exact phrase, or some descriptive keywords, to match earlier chats against"),
           "count": _int(_MOST_5, default=5),
           "start_timestamp": _int("Keep only chats changed after this Unix time (in seconds)"),
           "end_timestamp": _int("Keep only chats changed before this Unix time (in seconds)")},
          ("query",)),
    _tool("view_chat",
          "Fetch every message of one chat, by its ID, once a past chat that matters\n"
          "has been found.",
          {"chat_id": _str("The ID of the chat to fetch")},
          ("chat_id",)),
    _tool("search_memories", "Look up or page through saved memories by their text, path, type or ID.",
          {"query": _str("Optional text to match against memory contents and paths", default=""),
           "count": _int("How many memories to return (5 unless set)", default=5),
           "type": _str(_KIND, default="all"),
           "path": _str("Optional memory path to look around"),
           "memory_id": _str("Optional ID of the one memory to read")}),
    _tool("list_memory_paths",
          "List the paths memories are saved under, to see which groups exist before saving or moving one.",
          {"query": _str("Optional text to narrow down the paths or contents listed", default=""),
           "count": _int("The most paths to list", default=100),
           "type": _str(_KIND, default="all")}),
    _tool("read_memory_path",
          "Read the memories saved under one path, and those under nearby parent and child paths.",
          {"path": _str("The memory path to read"),
           "count": _int("The most memories to return", default=50),
           "type": _str(_KIND, default="all"),
           "include_children": _bool("Also return the memories under child paths", default=True)},
          ("path",)),
    _tool("list_memories", "List every memory saved for this user, with their IDs and timestamps.", {}),
    _tool("update_memory",
          "Make several memory changes at once, on learning something lasting.\n\n"
          'Type "user" is for facts, preferences or instructions about the user.\n'
          'Type "context" is for other lasting background that may help later chats.\n'
          f"{_FORGETTABLE}\n"
          "A path is optional: a fixed address that keeps related memories together.\n"
          "Reuse a path that list_memory_paths shows when one suits.\n"
          "Give no path when no group is obvious.\n\n"
          "Each operation takes one of these forms:\n"
          '- {"action": "add", "content": "...", "type": "user"|"context", "path": "..."}\n'
          '- {"action": "replace", "id": "...", "content": "...", "type": "user"|"context", "path": "..."}\n'
          '- {"action": "move", "id": "...", "path": "..."}\n'
          '- {"action": "remove", "id": "..."}',
          {"operations": _objects("The memory operations to carry out together")},
          ("operations",)),
    _tool("add_memory",
          "Keep lasting information that will make later chats better.\n\n"
          "Keep settled preferences, aims, projects, the people in the user's life, routines and standing "
          "requests.\n"
          f"{_FORGETTABLE}",
          {"content": _str("The text of the memory to save"),
           "type": _str('"user" for facts and preferences about the user, or "context" for other lasting '
                        "background", default="user"),
           "path": _str(_MEMORY_PATH)},
          ("content",)),
    _tool("replace_memory_content", "Correct the text of a saved memory that is out of date, found by its ID.",
          {"memory_id": _str("The ID of the memory to change"),
           "content": _str("The memory's new text"),
           "type": _str('Optional new type for the memory, "user" or "context"'),
           "path": _str(_MEMORY_PATH)},
          ("memory_id", "content")),
    _tool("delete_memory", "Remove one saved memory, given its ID.",
          {"memory_id": _str("The ID of the memory to remove")},
          ("memory_id",)),
    _tool("search_notes", "Look through the user's notes by their titles and text.",
          {"query": _str("The text to match against notes"),
           "count": _int(_MOST_5, default=5),
           "start_timestamp": _int("Keep only notes changed after this Unix time (in seconds)"),
           "end_timestamp": _int("Keep only notes changed before this Unix time (in seconds)")},
          ("query",)),
    _tool("view_note", "Fetch the whole text of one note by its ID.",
          {"note_id": _str("The ID of the note to fetch")},
          ("note_id",)),
    _tool("write_note", "Make a new note with the title and text given.",
          {"title": _str("A title for the new note"),
           "content": _str("The text of the note, in markdown")},
          ("title", "content")),
    _tool("replace_note_content",
          "Change a note: replace all of its markdown, or edit exact passages or character spans.\n\n"
          'When only some of the note changes, use "replace_text". Give find or start/end, never both.\n'
          "find must not be empty and is matched literally, capitals included.\n"
          "Matches never overlap. When find occurs more than once, give a 0-based occurrence or "
          "replace_all=true;\n"
          "if not, nothing changes and the offsets and surroundings of each match come back.\n"
          'A "replace" operation cannot share a request with any other.\n'
          "start and end count characters from 0 in the markdown that view_note returns.\n"
          "The character at end is left out.\n"
          "Offsets stay put while the operations apply.\n"
          "Spans may not overlap.\n"
          "expected is optional; if given, the edit is refused unless the span holds exactly that text.\n"
          '"replace_range" is an older name, still accepted, for the start/end form of "replace_text".',
          {"note_id": _str("The ID of the note to change"),
           "content": _str("New markdown to put in place of the entire note"),
           "operations": _objects(
               "Optional edits, each in one of these forms:\n"
               '- {"action": "replace", "content": "..."}\n'
               '- {"action": "replace_text", "start": 0, "end": 10, "content": "...", "expected": "..."}\n'
               '- {"action": "replace_text", "find": "old text", "content": "new text", "occurrence": 0, '
               '"replace_all": false}'),
           "title": _str("A new title for the note, if any")},
          ("note_id",)),
    _tool("create_skill",
          "Add a private skill to the workspace: a SKILL.md plus any UTF-8 files it relies on. Works "
          "without a terminal.",
          {"id": _str("A unique lowercase slug."),
           "name": _str("Its shown name."),
           "content": _str("The whole SKILL.md, with name and description in its frontmatter."),
           "files": _param("array", "Optional further files, each a path and its content. UTF-8 text only.",
                           items={"additionalProperties": False,
                                  "properties": {"path": _param("string"), "content": _param("string"),
                                                 "encoding": _param("string", const="base64")},
                                  "required": ["path", "content"], "type": "object"}),
           "commit_message": _str("Optional note on what this save changes.")},
          ("id", "name", "content")),
    _tool("create_tasks", "Show a checklist of tasks in the chat for work in several steps, so progress is seen.",
          {"tasks": _param(
              "array",
              "The checklist's items, each with content (string, required), status (pending|in_progress|"
              "completed|cancelled, default pending) and id (optional, generated if missing).",
              items={"properties": {"id": _str("A unique ID for the task; one is made up when it is left out."),
                                    "content": _str("What the task is."),
                                    "status": _str("Its progress.", default="pending",
                                                   enum=["pending", "in_progress", "completed", "cancelled"])},
                     "required": ["content"], "type": "object"})},
          ("tasks",)),
    _tool("update_task", "Move one task of the visible checklist to completed, in_progress, pending or cancelled.",
          {"id": _str("The ID of the task to change"),
           "status": _str("What to set it to: completed, in_progress, pending or cancelled (default: completed)",
                          default="completed")},
          ("id",)),
    _tool("create_automation",
          "Set up an automation that sends a prompt on a schedule, over and over or just once.\n"
          "Call it when the user wants some task carried out by itself at set times.\n"
          "The automation runs with the model of this chat.\n\n"
          "rrule takes an iCalendar RRULE string. Some typical ones:\n"
          '- Daily at 7:30: "DTSTART:20250101T073000\\nRRULE:FREQ=DAILY"\n'
          '- Fridays at 17:00: "DTSTART:20250103T170000\\nRRULE:FREQ=WEEKLY;BYDAY=FR"\n'
          '- Every two hours: "RRULE:FREQ=HOURLY;INTERVAL=2"\n'
          '- Every quarter of an hour: "RRULE:FREQ=MINUTELY;INTERVAL=15"\n'
          '- Just once, at a given moment: "DTSTART:20250601T100000\\nRRULE:FREQ=DAILY;COUNT=1"\n'
          '- On the 15th of each month: "DTSTART:20250115T080000\\nRRULE:FREQ=MONTHLY;BYMONTHDAY=15"\n\n'
          "Set DTSTART to the time the runs should happen at. COUNT=1 makes an automation run once only.",
          {"name": _str("A brief name saying what the automation is for"),
           "prompt": _str("The prompt or instructions to carry out on every run"),
           "rrule": _str("The schedule, as an iCalendar RRULE string"),
           "folder_id": _str("Optional folder, owned by the user, for the chats it makes")},
          ("name", "prompt", "rrule")),
    _tool("update_automation",
          "Change an existing automation. The fields passed are changed; the fields left out stay as they are.",
          {"automation_id": _str("The ID of the automation to change"),
           "name": _str("A new name for it (optional)"),
           "prompt": _str("A new prompt or instructions (optional)"),
           "rrule": _str("A new schedule as an iCalendar RRULE string (optional); create_automation shows "
                         "the format."),
           "model_id": _str("Another model to run it with (optional); empty is ignored"),
           "folder_id": _str("A new folder, owned by the user (optional); leave out or empty to keep the current "
                             "one, null to clear it", default="")},
          ("automation_id",)),
    _tool("list_automations", "List the automations this user has scheduled.",
          {"status": _str('Only this status, "active" or "paused"; leave out for all'),
           "folder_id": _str("Optional ID of a folder the user owns to filter by; an empty string drops the "
                             "folder filter"),
           "count": _int("The most automations to list (default: 10)", default=10)}),
    _tool("toggle_automation",
          "Switch a scheduled automation between running and paused: an active one pauses, a paused one resumes.",
          {"automation_id": _str("The ID of the automation to switch")},
          ("automation_id",)),
    _tool("delete_automation", "Remove a scheduled automation and the record of its runs.",
          {"automation_id": _str("The ID of the automation to remove")},
          ("automation_id",)),
    _tool("search_calendar_events",
          "Find calendar events, reminders and scheduled entries by text, dates, or both.\n"
          "Useful to see what is coming up, which reminders are set, or what is planned.",
          {"query": _str("Text to look for in the title, description or location of an event (optional)"),
           "start": _str('Keep only events that begin at or after this date and time, such as "2026-05-04 '
                         '00:00" (optional)'),
           "end": _str('Keep only events that begin before this date and time, such as "2026-05-11 00:00" '
                       "(optional)"),
           "count": _int("The most events to return (default: 10)", default=10)}),
    _tool("create_calendar_event",
          "Put an event, a reminder or an alarm in the calendar. Call it when the user asks to\n"
          "plan something, be reminded, or be woken up, or says things such as\n"
          '"remind me to", "make sure I remember", "ping me at" or "put it in my calendar".\n'
          "For a plain reminder, leave out end, location and all_day, and set reminder_minutes to 0.",
          {"title": _str('Title of the event or reminder (say "Dentist", "Water the plants", "Ring Dad")'),
           "start": _str('When it begins, in the user\'s local time (say "2026-05-04 08:30")'),
           "end": _str("When it ends, in the user's local time (optional; leave out for reminders and "
                       "events with no length)"),
           "description": _str("Notes or details about the event (optional)"),
           "calendar_id": _str("The calendar to put it in (optional; the default one if not given)"),
           "all_day": _bool("Whether the event takes up the whole day (default: false)", default=False),
           "location": _str("Where it takes place (optional)"),
           "reminder_minutes": _int("How many minutes ahead of the event to notify (optional, 10 unless set). "
                                    '0 means "when it starts", -1 means no notice at all.')},
          ("title", "start")),
    _tool("update_calendar_event",
          "Change an existing calendar event. The fields passed are changed;\n"
          "the fields left out stay as they are.",
          {"event_id": _str("The ID of the event to change"),
           "title": _str("A new title (optional)"),
           "description": _str("A new description (optional)"),
           "start": _str('A new start date and time in your local time, such as "2026-05-04 08:30" '
                         "(optional)"),
           "end": _str("A new end date and time in your local time (optional)"),
           "all_day": _param("boolean", "Whether the event takes up the whole day (optional)"),
           "location": _str("A new place for the event (optional)"),
           "is_cancelled": _param("boolean", "Pass true to call the event off (optional)"),
           "reminder_minutes": _int("How many minutes ahead of the event to send a reminder (optional). "
                                    '0 means "when it starts", -1 means none. Any positive number sets a lead '
                                    "time of your choosing (say 30 for half an hour ahead).")},
          ("event_id",)),
    _tool("delete_calendar_event", "Remove a calendar event for good.",
          {"event_id": _str("The ID of the event to remove")},
          ("event_id",)),
]

# The title task's prompt for the first exchange (the answer was still streaming when it was sent).
TITLE_PROMPT = ('### Task:\n'
                'Write a short title that sums up the conversation below.\n'
                '### Guidelines:\n'
                '- Name what the conversation is mainly about, so the title tells chats apart at a glance.\n'
                '- Be brief: two to four words work best.\n'
                '- No emojis, no quotation marks and no formatting of any kind.\n'
                '- Use the language most of the chat is written in; use English when it mixes several.\n'
                '- Be accurate rather than inventive.\n'
                '- Reply with the JSON object and nothing more: no opening remark and no closing one.\n'
                '- Send one bare JSON object, not wrapped in markdown code fences or in any other text.\n'
                '- Any words before or after the JSON, such as greetings, confirmations or explanations, '
                'break the program that parses the reply.\n'
                '### Output:\n'
                'JSON format: { "title": "a short title" }\n'
                '### Examples:\n'
                '- { "title": "Sourdough Starter" },\n'
                '- { "title": "Python Packaging" },\n'
                '- { "title": "Trip to Lisbon" },\n'
                '- { "title": "Garden Planning" }\n'
                '### Chat History:\n'
                '<chat_history>\n'
                'USER: Say hello in five words.\n'
                'ASSISTANT: \n'
                '</chat_history>')


def ollama_chat(messages: list[dict[str, Any]] = FIRST_MESSAGE) -> dict[str, Any]:
    """POST /api/chat for a message typed in the UI, on the Ollama connection."""
    return {"model": MODEL, "messages": messages, "stream": True, "tools": BUILTIN_TOOLS}


def openai_chat(messages: list[dict[str, Any]] = FIRST_MESSAGE) -> dict[str, Any]:
    """POST /v1/chat/completions for a message typed in the UI, on the OpenAI connection."""
    return {"stream": True, "model": MODEL, "messages": messages, "tools": BUILTIN_TOOLS}


def ollama_title() -> dict[str, Any]:
    """The title task on the Ollama connection (POST /api/chat)."""
    return {"model": MODEL, "messages": [{"role": "user", "content": TITLE_PROMPT}],
            "options": {"num_predict": 1000}, "stream": False}


def openai_title() -> dict[str, Any]:
    """The title task on the OpenAI connection (POST /v1/chat/completions)."""
    return {"model": MODEL, "messages": [{"role": "user", "content": TITLE_PROMPT}], "stream": False,
            "max_tokens": 1000}


def embed(texts: list[str]) -> dict[str, Any]:
    """POST /api/embed as its retrieval embeds document chunks (RAG_EMBEDDING_ENGINE=ollama)."""
    return {"input": texts, "model": MODEL, "truncate": True}


def unload(model: str = MODEL) -> dict[str, Any]:
    """POST /api/generate: its admin "unload" button."""
    return {"model": model, "keep_alive": 0, "prompt": ""}


def pull(model: str = MODEL) -> dict[str, Any]:
    """POST /api/pull from its admin model settings."""
    return {"name": model, "model": model, "insecure": True}


def create(model: str, base: str = MODEL, system: str = "You are terse.") -> dict[str, Any]:
    """POST /api/create from its admin model settings."""
    return {"model": model, "stream": True, "from": base, "system": system}


def delete(model: str) -> dict[str, Any]:
    """DELETE /api/delete from its admin model settings."""
    return {"model": model}
