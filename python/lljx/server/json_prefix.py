"""A byte-level JSON prefix checker: is this text the start of a JSON object, and what closes it soonest.

`format: "json"` needs both answers per token: `feed` says whether a token's bytes keep the
output a valid prefix, `completion` gives the shortest bytes that finish it (forced once the
token budget runs short). States are immutable tuples, so trying a candidate costs no copy.
The root must be an object, as in Ollama's JSON grammar; strings must be valid UTF-8.
"""

from __future__ import annotations

from typing import NamedTuple, cast

MAX_DEPTH = 32  # deeper nesting is refused so a forced completion stays short
MAX_WHITESPACE = 48  # consecutive whitespace bytes; stops a model padding forever

# Modes: what the next byte may be.
START = "start"  # before the root object
VALUE = "value"  # a value (after ':' or ',' in an array)
ARRAY_FIRST = "array_first"  # a value or ']'
OBJECT_FIRST = "object_first"  # a key or '}'
KEY = "key"  # a key (after ',' in an object)
COLON = "colon"
AFTER = "after"  # ',' or the closer of the innermost container
STRING = "string"
NUMBER = "number"
LITERAL = "literal"
DONE = "done"

WHITESPACE = frozenset(b" \t\n\r")
SPACED_MODES = frozenset({VALUE, ARRAY_FIRST, OBJECT_FIRST, KEY, COLON, AFTER})
CLOSER = {"{": ord("}"), "[": ord("]")}
ESCAPES = frozenset(b'"\\/bfnrt')
HEX = frozenset(b"0123456789abcdefABCDEF")
DIGITS = frozenset(b"0123456789")
# Number sub-states after which the number may end.
NUMBER_ENDS = frozenset({"zero", "int", "frac", "exp"})
LITERALS = {ord("t"): b"rue", ord("f"): b"alse", ord("n"): b"ull"}


class State(NamedTuple):
    """Where a prefix stands. `stack` holds the open containers ('{' or '['), innermost last.

    `sub` depends on the mode: for a string (is_key, escape, utf8_left, utf8_lo, utf8_hi), where
    escape is 0, 1 after a backslash, or 2 + hex digits read after \\u; for a number its
    sub-state name; for a literal the bytes still to come.
    """

    mode: str = START
    stack: str = ""
    sub: object = None
    spaces: int = 0


INITIAL = State()


def feed(state: State | None, data: bytes) -> State | None:
    """The state after `data`, or None when `data` would break the JSON (or follow its end)."""
    for byte in data:
        if state is None:
            return None
        state = step(state, byte)
    return state


def is_done(state: State) -> bool:
    return state.mode == DONE


def step(state: State, byte: int) -> State | None:
    mode = state.mode
    if mode == STRING:
        return _string(state, byte)
    if mode == NUMBER:
        return _number(state, byte)
    if mode == LITERAL:
        rest: bytes = state.sub  # type: ignore[assignment]
        if byte != rest[0]:
            return None
        return state._replace(sub=rest[1:]) if len(rest) > 1 else _value_done(state.stack)
    if byte in WHITESPACE:
        if mode not in SPACED_MODES or state.spaces >= MAX_WHITESPACE:
            return None
        return state._replace(spaces=state.spaces + 1)
    state = state._replace(spaces=0) if state.spaces else state
    if mode == START:
        return State(OBJECT_FIRST, "{") if byte == ord("{") else None
    if mode in (VALUE, ARRAY_FIRST):
        if mode == ARRAY_FIRST and byte == ord("]"):
            return _value_done(state.stack[:-1])
        return _value_start(state.stack, byte)
    if mode in (OBJECT_FIRST, KEY):
        if mode == OBJECT_FIRST and byte == ord("}"):
            return _value_done(state.stack[:-1])
        return State(STRING, state.stack, (True, 0, 0, 0, 0)) if byte == ord('"') else None
    if mode == COLON:
        return State(VALUE, state.stack) if byte == ord(":") else None
    if mode == AFTER:
        top = state.stack[-1]
        if byte == ord(","):
            return State(KEY if top == "{" else VALUE, state.stack)
        return _value_done(state.stack[:-1]) if byte == CLOSER[top] else None
    return None  # DONE: nothing may follow the root object


def _value_done(stack: str) -> State:
    return State(AFTER, stack) if stack else State(DONE)


def _value_start(stack: str, byte: int) -> State | None:
    if byte in (ord("{"), ord("[")):
        if len(stack) >= MAX_DEPTH:
            return None
        return State(OBJECT_FIRST if byte == ord("{") else ARRAY_FIRST, stack + chr(byte))
    if byte == ord('"'):
        return State(STRING, stack, (False, 0, 0, 0, 0))
    if byte == ord("-"):
        return State(NUMBER, stack, "minus")
    if byte == ord("0"):
        return State(NUMBER, stack, "zero")
    if byte in DIGITS:
        return State(NUMBER, stack, "int")
    if byte in LITERALS:
        return State(LITERAL, stack, LITERALS[byte])
    return None


StringSub = tuple[bool, int, int, int, int]


def _string(state: State, byte: int) -> State | None:
    is_key, escape, left, lo, hi = cast(StringSub, state.sub)
    if left:
        if not lo <= byte <= hi:
            return None
        return state._replace(sub=(is_key, 0, left - 1, 0x80, 0xBF))
    if escape == 1:
        if byte == ord("u"):
            return state._replace(sub=(is_key, 2, 0, 0, 0))
        return state._replace(sub=(is_key, 0, 0, 0, 0)) if byte in ESCAPES else None
    if escape:
        if byte not in HEX:
            return None
        return state._replace(sub=(is_key, 0 if escape == 5 else escape + 1, 0, 0, 0))
    if byte == ord('"'):
        return State(COLON, state.stack) if is_key else _value_done(state.stack)
    if byte == ord("\\"):
        return state._replace(sub=(is_key, 1, 0, 0, 0))
    if byte < 0x20:
        return None  # control characters must be escaped
    if byte < 0x80:
        return state
    lead = _utf8_lead(byte)
    return None if lead is None else state._replace(sub=(is_key, 0, *lead))


def _utf8_lead(byte: int) -> tuple[int, int, int] | None:
    """(continuation bytes, range of the first one) for a UTF-8 lead byte; None for an invalid one."""
    if 0xC2 <= byte <= 0xDF:
        return (1, 0x80, 0xBF)
    if byte == 0xE0:
        return (2, 0xA0, 0xBF)  # no overlong forms
    if byte == 0xED:
        return (2, 0x80, 0x9F)  # no surrogates
    if 0xE1 <= byte <= 0xEF:
        return (2, 0x80, 0xBF)
    if byte == 0xF0:
        return (3, 0x90, 0xBF)
    if 0xF1 <= byte <= 0xF3:
        return (3, 0x80, 0xBF)
    if byte == 0xF4:
        return (3, 0x80, 0x8F)  # nothing past U+10FFFF
    return None


def _number(state: State, byte: int) -> State | None:
    sub = state.sub
    if byte in DIGITS:
        if sub in ("minus", "int"):
            return state._replace(sub="zero" if sub == "minus" and byte == ord("0") else "int")
        if sub in ("dot", "frac"):
            return state._replace(sub="frac")
        if sub in ("e", "esign", "exp"):
            return state._replace(sub="exp")
        return None  # a leading zero takes no more digits
    if byte == ord(".") and sub in ("zero", "int"):
        return state._replace(sub="dot")
    if byte in b"eE" and sub in ("zero", "int", "frac"):
        return state._replace(sub="e")
    if byte in b"+-" and sub == "e":
        return state._replace(sub="esign")
    if sub not in NUMBER_ENDS:
        return None
    # The number ends here; the byte is read as what follows it.
    return step(State(AFTER, state.stack), byte)


def completion(state: State) -> bytes:
    """The shortest bytes that turn the prefix into a complete JSON object (b"" when done)."""
    out = bytearray()
    while state.mode != DONE:
        piece = _progress(state)
        following = feed(state, piece)
        assert following is not None, (state, piece)
        state = following
        out += piece
    return bytes(out)


def _progress(state: State) -> bytes:
    """A few bytes that bring the state closer to DONE."""
    mode = state.mode
    if mode == START:
        return b"{"
    if mode in (VALUE, KEY):
        return b"0" if mode == VALUE else b'""'
    if mode == COLON:
        return b":"
    if mode == STRING:
        _, escape, left, lo, _ = cast(StringSub, state.sub)
        if left:
            return bytes([lo])
        return b"n" if escape == 1 else b"0" if escape else b'"'
    if mode == NUMBER:
        return bytes([CLOSER[state.stack[-1]]]) if state.sub in NUMBER_ENDS else b"0"
    if mode == LITERAL:
        return state.sub  # type: ignore[return-value]
    return bytes([CLOSER[state.stack[-1]]])  # OBJECT_FIRST, ARRAY_FIRST, AFTER
