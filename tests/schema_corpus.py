"""JSON schemas of the kinds JSONSchemaBench covers, each with a short prompt that asks for it.

Nested objects, arrays with item bounds, enums, const, anyOf/oneOf/allOf, patterns, string
lengths, numeric bounds, formats, nullable types, required and optional properties,
additionalProperties false, local and recursive $ref, and a root that is not an object.
Strings are mostly bounded so a small model's replies end within a small budget.
"""

from __future__ import annotations

from typing import Any

NAME = {"type": "string", "minLength": 1, "maxLength": 16}

CORPUS: dict[str, tuple[str, dict[str, Any]]] = {
    "any object": ("Describe a cat as JSON.", {"type": "object"}),
    "nested objects": ("Give a user with a name and an email as JSON.", {
        "type": "object",
        "properties": {"user": {
            "type": "object",
            "properties": {"name": NAME, "email": {"type": "string", "maxLength": 16}},
            "required": ["name", "email"],
            "additionalProperties": False,
        }},
        "required": ["user"],
        "additionalProperties": False,
    }),
    "array bounds": ("Give up to three tags for a blog post about cooking.", {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "minItems": 1, "maxItems": 3}},
        "required": ["tags"],
        "additionalProperties": False,
    }),
    "enum": ("What color is the sky?", {
        "type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"],
        "additionalProperties": False,
    }),
    "const": ("Describe a point.", {
        "type": "object",
        "properties": {"version": {"const": 2}, "kind": {"const": "point"}, "x": {"type": "integer"}},
        "required": ["version", "kind", "x"],
        "additionalProperties": False,
    }),
    "anyOf": ("Give an identifier for an order.", {
        "type": "object",
        "properties": {"id": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 99999},
                                        {"type": "string", "maxLength": 8}]}},
        "required": ["id"],
        "additionalProperties": False,
    }),
    "oneOf": ("Describe a shape.", {
        "type": "object",
        "properties": {"shape": {"oneOf": [
            {"type": "object", "properties": {"radius": {"type": "number"}}, "required": ["radius"],
             "additionalProperties": False},
            {"type": "object", "properties": {"side": {"type": "number"}}, "required": ["side"],
             "additionalProperties": False},
        ]}},
        "required": ["shape"],
    }),
    "allOf": ("Give a number and a flag.", {"allOf": [
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        {"properties": {"b": {"type": "boolean"}}, "required": ["b"]},
    ]}),
    "pattern": ("When did the first moon landing happen?", {
        "type": "object",
        "properties": {"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}},
        "required": ["date"],
        "additionalProperties": False,
    }),
    "string lengths": ("Give an airport code.", {
        "type": "object", "properties": {"code": {"type": "string", "minLength": 3, "maxLength": 5}}, "required": ["code"],
    }),
    "integer bounds": ("Rate the movie Up from 1 to 10.", {
        "type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}}, "required": ["score"],
        "additionalProperties": False,
    }),
    "number bounds": ("What share of Earth is water?", {
        "type": "object",
        "properties": {"ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}},
        "required": ["ratio"],
        "additionalProperties": False,
    }),
    "required and optional": ("Give a book title.", {
        "type": "object",
        "properties": {"title": NAME, "subtitle": NAME, "year": {"type": "integer", "minimum": 0, "maximum": 2100}},
        "required": ["title"],
    }),
    "no additional properties": ("Answer with two facts.", {
        "type": "object",
        "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    }),
    "local ref": ("Give a line segment.", {
        "$defs": {"point": {
            "type": "object",
            "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
            "required": ["x", "y"],
            "additionalProperties": False,
        }},
        "type": "object",
        "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
        "required": ["start", "end"],
        "additionalProperties": False,
    }),
    "recursive ref": ("Give a small tree of numbers.", {
        "$defs": {"node": {
            "type": "object",
            "properties": {"value": {"type": "integer"},
                           "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
            "required": ["value"],
            "additionalProperties": False,
        }},
        "$ref": "#/$defs/node",
    }),
    "array of objects": ("List a fruit with its quantity.", {
        "type": "array",
        "items": {"type": "object", "properties": {"name": NAME, "qty": {"type": "integer", "minimum": 0}},
                  "required": ["name", "qty"], "additionalProperties": False},
        "minItems": 1,
        "maxItems": 2,
    }),
    "nullable": ("Give a nickname, if any.", {
        "type": "object", "properties": {"nickname": {"type": ["string", "null"], "maxLength": 10}},
        "required": ["nickname"],
    }),
    "format date": ("When is New Year's Day 2025?", {
        "type": "object", "properties": {"when": {"type": "string", "format": "date"}}, "required": ["when"],
    }),
    "scalar enum root": ("Pick one.", {"enum": [1, "two", None, True]}),
    "definitions": ("Give a person and their pet.", {
        "definitions": {"animal": {"type": "object", "properties": {"species": NAME}, "required": ["species"],
                                   "additionalProperties": False}},
        "type": "object",
        "properties": {"name": NAME, "pet": {"$ref": "#/definitions/animal"}},
        "required": ["name", "pet"],
    }),
    "prompt pool": ("Generate 3 short questions about math.", {
        "properties": {"prompts": {"items": {"type": "string", "maxLength": 32}, "title": "Prompts", "type": "array",
                                   "maxItems": 2}},
        "required": ["prompts"],
        "title": "PromptPool",
        "type": "object",
    }),
}
