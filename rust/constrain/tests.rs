//! Grammars and masks on a small byte-level vocabulary: what a schema allows, what it forces,
//! where it may end, what the cache keeps, and which schemas are refused.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::tokenizer::{byte_level_encode, GgufVocab, Tokenizer};

const EOS: u32 = 0;
const EOT: u32 = 1;

/// Specials first (end of text, end of turn), then every byte, then a few merged pieces.
fn tokenizer() -> Arc<Tokenizer> {
    let mut tokens = vec!["<|endoftext|>".to_string(), "<|im_end|>".to_string()];
    tokens.extend((0..=255u8).map(|b| byte_level_encode(&[b])));
    let merged = ["{\"", "\":", "na", "me", "name", "\"}", "ab"];
    tokens.extend(merged.iter().map(|m| byte_level_encode(m.as_bytes())));
    let merges: Vec<String> = [
        ("{", "\""),
        ("\"", ":"),
        ("n", "a"),
        ("m", "e"),
        ("na", "me"),
        ("\"", "}"),
        ("a", "b"),
    ]
    .iter()
    .map(|(a, b)| {
        format!(
            "{} {}",
            byte_level_encode(a.as_bytes()),
            byte_level_encode(b.as_bytes())
        )
    })
    .collect();
    let mut types = vec![3, 3];
    types.extend(std::iter::repeat_n(1, tokens.len() - 2));
    Arc::new(
        Tokenizer::from_gguf(GgufVocab {
            model: "gpt2",
            pre: "gpt2",
            tokens: &tokens,
            merges: &merges,
            token_types: &types,
            bos_id: None,
            eos_id: Some(EOS as i64),
            add_bos: false,
        })
        .unwrap(),
    )
}

fn grammars_with(limits: Limits, logit_vocab: usize) -> Grammars {
    Grammars::new(tokenizer(), &[EOS, EOT], logit_vocab, limits).unwrap()
}

fn grammars() -> Grammars {
    let tok = tokenizer();
    let n = tok.vocab_size();
    Grammars::new(tok, &[EOS, EOT], n, Limits::default()).unwrap()
}

fn bit(mask: &[u32], token: u32) -> bool {
    mask[token as usize / 32] >> (token % 32) & 1 == 1
}

/// Feeds `text` token by token (as the tokenizer splits it), checking each was allowed.
fn walk(row: &mut RowConstraint, words: usize, text: &str) -> Vec<u32> {
    let ids = tokenizer().encode(text, false, false).unwrap();
    let mut mask = vec![0u32; words];
    for &id in &ids {
        row.fill(&mut mask).unwrap();
        assert!(bit(&mask, id), "token {id} of {text:?} not allowed");
        row.consume(id).unwrap();
    }
    mask
}

const NAME_SCHEMA: &str = r#"{"type": "object", "properties": {"name": {"type": "string", "maxLength": 4}},
    "required": ["name"], "additionalProperties": false}"#;

#[test]
fn a_schema_allows_its_text_and_ends_with_a_stop_token() {
    let g = grammars();
    let compiled = g.compile(NAME_SCHEMA).unwrap();
    assert!(!compiled.cached);
    let mut row = RowConstraint::new(&compiled.grammar);
    let words = g.mask_words();
    let mut mask = vec![0u32; words];
    assert_eq!(row.fill(&mut mask).unwrap(), Allowed::Several);
    let brace = tokenizer().encode("{", false, false).unwrap()[0];
    let letter = tokenizer().encode("x", false, false).unwrap()[0];
    assert!(bit(&mask, brace) && !bit(&mask, letter));
    assert!(
        !bit(&mask, EOS) && !bit(&mask, EOT),
        "no stop before the object"
    );
    assert!(!row.is_complete());
    walk(&mut row, words, r#"{"name":"ab"}"#);
    assert!(row.is_complete(), "nothing may follow the object");
}

#[test]
fn a_stop_token_is_allowed_where_the_grammar_may_end() {
    let g = grammars();
    let grammar = g.compile(r#"{"type": "integer"}"#).unwrap().grammar;
    let mut row = RowConstraint::new(&grammar);
    let mut mask = vec![0u32; g.mask_words()];
    row.fill(&mut mask).unwrap();
    assert!(!bit(&mask, EOS) && !bit(&mask, EOT));
    walk(&mut row, g.mask_words(), "12");
    row.fill(&mut mask).unwrap();
    let digit = tokenizer().encode("3", false, false).unwrap()[0];
    assert!(bit(&mask, EOS) && bit(&mask, EOT) && bit(&mask, digit));
    assert!(!row.is_complete());
}

#[test]
fn special_tokens_are_never_part_of_the_text() {
    let g = grammars();
    let grammar = g.compile(r#"{"type": "object"}"#).unwrap().grammar;
    let mut row = RowConstraint::new(&grammar);
    let mut mask = walk(&mut row, g.mask_words(), r#"{"a":""#);
    row.fill(&mut mask).unwrap();
    let quote = tokenizer().encode("\"", false, false).unwrap()[0];
    assert!(bit(&mask, quote) && !bit(&mask, EOS) && !bit(&mask, EOT));
}

#[test]
fn a_single_allowed_token_is_named() {
    let g = grammars();
    let schema = r#"{"type": "object", "properties": {"k": {"const": "ab"}}, "required": ["k"],
        "additionalProperties": false}"#;
    let grammar = g.compile(schema).unwrap().grammar;
    let mut row = RowConstraint::new(&grammar);
    let mut mask = walk(&mut row, g.mask_words(), r#"{"k":""#);
    let ab = tokenizer().encode("ab", false, false).unwrap()[0];
    // "ab" is one token and the only canonical spelling of what must come next.
    assert_eq!(row.fill(&mut mask).unwrap(), Allowed::Only(ab));
}

#[test]
fn padding_ids_past_the_tokenizer_are_never_allowed() {
    let n = tokenizer().vocab_size();
    let g = grammars_with(Limits::default(), n + 40);
    assert_eq!(g.mask_words(), (n + 40).div_ceil(32));
    let mut row = RowConstraint::new(&g.compile(r#"{"type": "string"}"#).unwrap().grammar);
    let mut mask = vec![0u32; g.mask_words()];
    row.fill(&mut mask).unwrap();
    assert!((n as u32..(n + 40) as u32).all(|t| !bit(&mask, t)));
}

#[test]
fn masks_fill_rows_with_and_without_grammars() {
    let g = grammars();
    let grammar = g.compile(NAME_SCHEMA).unwrap().grammar;
    let words = g.mask_words();
    let mut masks = Masks::new(vec![None, Some(RowConstraint::new(&grammar))], words);
    let (allowed, _ns) = masks.fill().unwrap();
    assert_eq!(allowed, [Allowed::Several, Allowed::Several]);
    assert!(masks.words()[..words].iter().all(|&w| w == u32::MAX));
    assert!(!bit(&masks.words()[words..], EOS));
    let brace = tokenizer().encode("{", false, false).unwrap()[0];
    masks.row_mut(1).unwrap().consume(brace).unwrap();
    assert!(masks.row_mut(0).is_none());
}

#[test]
fn the_same_schema_compiles_once_and_the_cache_is_bounded() {
    let limits = Limits {
        cache_entries: 2,
        ..Limits::default()
    };
    let n = tokenizer().vocab_size();
    let g = grammars_with(limits, n);
    assert!(!g.compile(NAME_SCHEMA).unwrap().cached);
    let respaced: String = NAME_SCHEMA.split_whitespace().collect::<Vec<_>>().join("");
    assert!(g.compile(&respaced).unwrap().cached);
    // Property order is part of a schema's meaning (it orders the output), so it is a new key.
    let a_then_b = r#"{"properties": {"a": {}, "b": {}}}"#;
    let b_then_a = r#"{"properties": {"b": {}, "a": {}}}"#;
    assert!(!g.compile(a_then_b).unwrap().cached);
    assert!(!g.compile(b_then_a).unwrap().cached);
    assert_eq!(g.cached_count(), 2);
    // NAME_SCHEMA was the least recently used, so it went first.
    assert!(!g.compile(NAME_SCHEMA).unwrap().cached);
    assert!(g.compile(b_then_a).unwrap().cached);
}

fn refusal(g: &Grammars, schema: &str) -> String {
    match g.compile(schema) {
        Ok(_) => panic!("{schema} compiled"),
        Err(e) => {
            let message = e.to_string();
            assert!(!message.contains('\n'), "{message}");
            eprintln!("{message}");
            message
        }
    }
}

#[test]
fn bad_schemas_are_refused_with_a_reason() {
    let g = grammars();
    assert!(refusal(&g, "{\"type\": ").contains("not valid JSON"));
    assert!(refusal(&g, "[1, 2]").contains("must be an object, got an array"));
    assert!(refusal(&g, r#"{"type": "frobnicate"}"#).contains("frobnicate"));
    assert!(refusal(&g, r##"{"$ref": "#/$defs/missing"}"##).contains("missing"));
    let remote = r#"{"$ref": "https://example.com/schema.json"}"#;
    assert!(refusal(&g, remote).contains("example.com"));
    let small = Limits {
        max_schema_bytes: 64,
        ..Limits::default()
    };
    let n = tokenizer().vocab_size();
    let message = refusal(&grammars_with(small, n), NAME_SCHEMA);
    assert!(message.contains("more than the limit of 64"), "{message}");
}

#[test]
fn a_schema_too_slow_to_compile_is_refused_in_time() {
    let hurried = Limits {
        compile_timeout: Duration::from_millis(1),
        ..Limits::default()
    };
    let n = tokenizer().vocab_size();
    let g = grammars_with(hurried, n);
    // Hundreds of properties with patterns: far more than a millisecond of compiling.
    let properties: Vec<String> = (0..400)
        .map(|i| format!(r#""p{i}": {{"type": "string", "pattern": "^[a-z]{{{i}}}x[0-9]+$"}}"#))
        .collect();
    let schema = format!(
        r#"{{"type": "object", "properties": {{{}}}}}"#,
        properties.join(",")
    );
    let started = std::time::Instant::now();
    let message = refusal(&g, &schema);
    assert!(message.contains("longer than 1 ms"), "{message}");
    assert!(started.elapsed() < Duration::from_millis(500));
}
