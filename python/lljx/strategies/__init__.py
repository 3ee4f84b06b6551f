"""JIT strategies: where jax.jit goes in the decode pipeline, each a plugin building a Decoder.

What a third-party strategy package may build on (see plugins/ for an example):
the contract (`Strategy`, `Decoder`, `DecodeState`, `LogitsState`, `DecodePlan`), the step
functions the built-ins jit in different places, the split step of constrained generation
(`SplitStep`, `jitted_split`), the two decoder shells that compile ahead of time
(`CompiledDecoder`) or warm up by running (`EagerDecoder`), and batched decoding: `SlotDecoder`
built from `SlotSteps` (`jitted_slot_steps`, `composed_slot_steps`, or `per_token_slots` and
`k_token_slots` as the built-ins do).
"""

from lljx.strategies.api import DecodePlan, DecodeState, Decoder, LogitsState, Strategy, bucket_length, plan_for
from lljx.strategies.batched import k_token_slots, per_token_slots
from lljx.strategies.compiled import CompiledDecoder, per_token_decoder
from lljx.strategies.eager import EagerDecoder
from lljx.strategies.slots import SlotDecoder, SlotSteps, composed_slot_steps, jitted_slot_steps
from lljx.strategies.split import SplitStep, eager_split, jitted_split
from lljx.strategies.steps import decode_logits, decode_step, prefill_logits, prefill_step, sample_next

__all__ = [
    "CompiledDecoder",
    "DecodePlan",
    "DecodeState",
    "Decoder",
    "EagerDecoder",
    "LogitsState",
    "SlotDecoder",
    "SlotSteps",
    "SplitStep",
    "Strategy",
    "bucket_length",
    "composed_slot_steps",
    "decode_logits",
    "decode_step",
    "eager_split",
    "jitted_slot_steps",
    "jitted_split",
    "k_token_slots",
    "per_token_decoder",
    "per_token_slots",
    "plan_for",
    "prefill_logits",
    "prefill_step",
    "sample_next",
]
