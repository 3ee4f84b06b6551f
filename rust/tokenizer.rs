//! One byte-level BPE tokenizer loaded from a HF tokenizer.json, GGUF vocabulary data or a
//! tiktoken tokenizer.model, all served by the `tokenizers` crate's BPE engine.
//!
//! Decoding does not go through the engine: every id maps to the exact bytes it stands for,
//! so `decode`, `token_bytes` and the streaming decoder agree byte for byte.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::OnceLock;

use ahash::AHashMap;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Model, SplitDelimiterBehavior};

use crate::error::{Error, Result};

type Engine = tokenizers::Tokenizer;

/// Meta's Llama 3 split pattern, as tiktoken runs it for tokenizer.model.
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
// llama.cpp spells the contractions out instead of using (?i:); GGUF vocabularies follow it.
const LLAMA3_GGUF_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Names of the 256 special tokens Meta's Llama 3 tokenizer.model implies, from id
/// `len(ranks)` on; the file itself holds only the ranks.
pub fn llama3_special_tokens() -> Vec<String> {
    let named = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|reserved_special_token_2|>",
        "<|reserved_special_token_3|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|reserved_special_token_4|>",
        "<|eot_id|>",
    ];
    let mut names: Vec<String> = named.iter().map(|s| s.to_string()).collect();
    let reserved = 256 - named.len();
    names.extend((5..5 + reserved).map(|i| format!("<|reserved_special_token_{i}|>")));
    names
}

const BOS_NAMES: [&str; 4] = ["<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>"];
const EOS_NAMES: [&str; 4] = ["<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>"];

/// How llama.cpp splits text before BPE, selected by GGUF `tokenizer.ggml.pre`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    Llama3,
    Qwen2,
    /// Single digits, then the GPT-2 pattern (SmolLM, StarCoder and relatives).
    SmolLm,
    Gpt2,
    /// llama.cpp's fallback when a GGUF names no pre-tokenizer.
    Default,
}

impl PreTokenizer {
    pub fn from_gguf_name(name: &str) -> Result<Self> {
        Ok(match name {
            "llama-bpe" | "llama3" | "llama-v3" => PreTokenizer::Llama3,
            "qwen2" | "deepseek-r1-qwen" => PreTokenizer::Qwen2,
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => PreTokenizer::SmolLm,
            "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" => PreTokenizer::Gpt2,
            "default" => PreTokenizer::Default,
            other => {
                return Err(Error::vocab(format!(
                "unknown GGUF pre-tokenizer {other:?}; supported: llama-bpe (llama3, llama-v3), \
                     qwen2, smollm (starcoder, refact, command-r, ...), gpt2, default"
            )))
            }
        })
    }

    /// Regexes applied one after another, each splitting the pieces the previous left.
    pub fn patterns(self) -> &'static [&'static str] {
        match self {
            PreTokenizer::Llama3 => &[LLAMA3_GGUF_PATTERN],
            PreTokenizer::Qwen2 => &[QWEN2_PATTERN],
            PreTokenizer::SmolLm => &[r"\p{N}", GPT2_PATTERN],
            PreTokenizer::Gpt2 => &[GPT2_PATTERN],
            PreTokenizer::Default => &[
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2_PATTERN,
                r"\p{N}+",
                r"[0-9][0-9][0-9]",
            ],
        }
    }

    /// Whether a pre-token that is itself in the vocabulary skips the merges (as llama.cpp
    /// and tiktoken do for Llama 3).
    pub fn ignore_merges(self) -> bool {
        self == PreTokenizer::Llama3
    }
}

/// The GPT-2 byte-to-character table that byte-level BPE vocabularies are written in.
struct ByteLevelTable {
    to_char: [char; 256],
    /// Indexed by code point; the table only uses U+0000..U+0143.
    to_byte: [Option<u8>; 324],
}

fn byte_level_table() -> &'static ByteLevelTable {
    static TABLE: OnceLock<ByteLevelTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut to_char = ['\0'; 256];
        let mut to_byte = [None; 324];
        let mut next = 256u32;
        for b in 0..=255u8 {
            let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            let cp = if printable {
                b as u32
            } else {
                next += 1;
                next - 1
            };
            let c = char::from_u32(cp).expect("code points below 0x144 are valid chars");
            to_char[b as usize] = c;
            to_byte[cp as usize] = Some(b);
        }
        ByteLevelTable { to_char, to_byte }
    })
}

/// Writes bytes the way byte-level BPE vocabularies spell them (b" the" -> "Ġthe").
pub fn byte_level_encode(bytes: &[u8]) -> String {
    let table = byte_level_table();
    bytes.iter().map(|&b| table.to_char[b as usize]).collect()
}

/// The bytes a byte-level token spells, or None if it has a character outside the table.
pub fn byte_level_decode(token: &str) -> Option<Vec<u8>> {
    let table = byte_level_table();
    token
        .chars()
        .map(|c| table.to_byte.get(c as usize).copied().flatten())
        .collect()
}

/// Bytes of a vocabulary entry; entries outside the byte alphabet stand for their own
/// UTF-8, which is also what the HF ByteLevel decoder does with them.
fn vocab_token_bytes(token: &str) -> Vec<u8> {
    byte_level_decode(token).unwrap_or_else(|| token.as_bytes().to_vec())
}

/// Standard base64 (with or without padding), as tiktoken files use it.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let body = text.trim_end_matches('=');
    if text.len() - body.len() > 2 || body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in body.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// BPE merges equivalent to tiktoken's rank rule: every way of writing a token as two
/// shorter tokens becomes a merge with the token's rank as its priority.
pub fn merges_from_ranks(ranks: &[(Vec<u8>, u32)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let lookup: HashMap<&[u8], u32> = ranks.iter().map(|(t, r)| (t.as_slice(), *r)).collect();
    let mut by_rank: Vec<&(Vec<u8>, u32)> = ranks.iter().collect();
    by_rank.sort_by_key(|(_, r)| *r);
    let mut merges = Vec::new();
    let mut splits = Vec::new();
    for (token, _) in by_rank {
        splits.clear();
        for i in 1..token.len() {
            let (left, right) = token.split_at(i);
            if let (Some(&rl), Some(&rr)) = (lookup.get(left), lookup.get(right)) {
                splits.push((rl, rr, i));
            }
        }
        // Ties between splits of one token cannot change the result; order them stably.
        splits.sort_unstable();
        merges.extend(
            splits
                .iter()
                .map(|&(_, _, i)| (token[..i].to_vec(), token[i..].to_vec())),
        );
    }
    merges
}

/// Replacements for the BOS/EOS found in a tokenizer file (token strings, as in
/// tokenizer_config.json), and whether callers should add BOS.
#[derive(Clone, Debug, Default)]
pub struct SpecialOverrides {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub add_bos: Option<bool>,
    /// Names of the special tokens after the ranks of a tiktoken file (default: Llama 3's).
    pub tiktoken_specials: Option<Vec<String>>,
}

/// GGUF tokenizer fields, as the gguf reader gives them.
#[derive(Clone, Copy, Debug)]
pub struct GgufVocab<'a> {
    pub model: &'a str,
    pub pre: &'a str,
    pub tokens: &'a [String],
    pub merges: &'a [String],
    /// One GGUF token type per token; empty means all normal.
    pub token_types: &'a [i32],
    pub bos_id: Option<i64>,
    pub eos_id: Option<i64>,
    pub add_bos: bool,
}

/// What an id stands for.
#[derive(Clone, Debug)]
struct Entry {
    bytes: Vec<u8>,
    special: bool,
}

/// A loaded tokenizer: immutable, shareable across threads.
pub struct Tokenizer {
    /// Splits special-token text out of the input into its id.
    parsing: Engine,
    /// Encodes special-token text like any other text.
    literal: Engine,
    entries: Vec<Option<Entry>>,
    special_ids: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

fn pre_tokenizer(patterns: &[&str]) -> Result<PreTokenizerWrapper> {
    let mut steps = Vec::with_capacity(patterns.len() + 1);
    for pattern in patterns {
        let split = Split::new(
            SplitPattern::Regex((*pattern).to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::vocab(format!("bad split pattern {pattern:?}: {e}")))?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    // The regexes above already split; ByteLevel only maps bytes to the vocabulary alphabet.
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, true, false,
    )));
    Ok(PreTokenizerWrapper::Sequence(Sequence::new(steps)))
}

fn bpe_engine(
    vocab: AHashMap<String, u32>,
    merges: Vec<(String, String)>,
    ignore_merges: bool,
    patterns: &[&str],
    added: Vec<AddedToken>,
) -> Result<Engine> {
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| Error::vocab(e.to_string()))?;
    let mut engine = Engine::new(bpe);
    engine.with_pre_tokenizer(Some(pre_tokenizer(patterns)?));
    engine
        .add_tokens(added)
        .map_err(|e| Error::vocab(e.to_string()))?;
    Ok(engine)
}

fn added_token(content: &str, special: bool) -> AddedToken {
    AddedToken::from(content, special).normalized(false)
}

impl Tokenizer {
    fn assemble(
        engine: Engine,
        entries: Vec<Option<Entry>>,
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
    ) -> Result<Self> {
        if add_bos && bos.is_none() {
            return Err(Error::vocab(
                "add_bos is set but the tokenizer has no BOS token",
            ));
        }
        let special_ids = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.as_ref().is_some_and(|e| e.special))
            .map(|(i, _)| i as u32)
            .collect();
        let mut literal = engine.clone();
        literal.set_encode_special_tokens(true);
        Ok(Tokenizer {
            parsing: engine,
            literal,
            entries,
            special_ids,
            bos,
            eos,
            add_bos,
        })
    }

    /// Loads a tokenizer.json or a tiktoken tokenizer.model, told apart by content.
    pub fn from_file(path: &Path, overrides: &SpecialOverrides) -> Result<Self> {
        let name = path.display().to_string();
        let data = std::fs::read(path).map_err(|e| Error::io(&name, e))?;
        match data.iter().find(|b| !b.is_ascii_whitespace()) {
            None => Err(Error::format(&name, "the file is empty")),
            Some(b'{') => Self::from_json(&name, &data, overrides),
            Some(_) => Self::from_tiktoken(&name, &data, overrides),
        }
    }

    /// A HF tokenizer.json whose model is byte-level BPE. `name` only labels errors.
    pub fn from_json(name: &str, data: &[u8], overrides: &SpecialOverrides) -> Result<Self> {
        let json: serde_json::Value = serde_json::from_slice(data)
            .map_err(|e| Error::format(name, format!("not valid JSON: {e}")))?;
        let model_type = json.pointer("/model/type").and_then(|v| v.as_str());
        if model_type.is_some_and(|t| t != "BPE") {
            return Err(Error::format(
                name,
                format!(
                    "model type {:?} is not supported, only byte-level BPE",
                    model_type.unwrap_or("")
                ),
            ));
        }
        let byte_level = json.get("decoder").is_some_and(mentions_byte_level)
            || json.get("pre_tokenizer").is_some_and(mentions_byte_level);
        if !byte_level {
            return Err(Error::format(
                name,
                "only byte-level BPE tokenizers are supported",
            ));
        }
        let template = json.get("post_processor").and_then(template_specials);
        let mut engine: Engine = serde_json::from_value(json)
            .map_err(|e| Error::format(name, format!("not a tokenizer: {e}")))?;
        // Files may ask for truncation or padding; ids must never be silently cut or padded.
        engine
            .with_truncation(None)
            .map_err(|e| Error::format(name, e.to_string()))?;
        engine.with_padding(None);

        let added = engine.get_added_tokens_decoder();
        let model = engine.get_model();
        let size = model
            .get_vocab()
            .values()
            .chain(added.keys())
            .max()
            .map_or(0, |&m| m as usize + 1);
        // Ids index a table, so a corrupt file with one huge id must not size it.
        let count = model.get_vocab_size() + added.len();
        if size > 2 * count + 1024 {
            return Err(Error::format(
                name,
                format!("token ids go up to {size} for {count} tokens"),
            ));
        }
        let entries = (0..size as u32)
            .map(|id| match added.get(&id) {
                Some(t) => Some(Entry {
                    bytes: t.content.as_bytes().to_vec(),
                    special: t.special,
                }),
                None => model.id_to_token(id).map(|t| Entry {
                    bytes: vocab_token_bytes(&t),
                    special: false,
                }),
            })
            .collect::<Vec<_>>();

        let lookup = |token: &str| -> Option<u32> {
            engine
                .token_to_id(token)
                .filter(|&id| entries[id as usize].as_ref().is_some_and(|e| e.special))
        };
        let by_name = |names: &[&str]| names.iter().find_map(|n| lookup(n));
        let (template_bos, template_eos) = template.clone().unwrap_or_default();
        let bos = match &overrides.bos {
            Some(t) => Some(resolve(&engine, t, "BOS")?),
            None => template_bos
                .as_deref()
                .and_then(|t| engine.token_to_id(t))
                .or_else(|| by_name(&BOS_NAMES)),
        };
        let eos = match &overrides.eos {
            Some(t) => Some(resolve(&engine, t, "EOS")?),
            None => template_eos
                .as_deref()
                .and_then(|t| engine.token_to_id(t))
                .or_else(|| by_name(&EOS_NAMES)),
        };
        // A post-processor template is the file's own statement about BOS; without one,
        // Llama-family files want BOS whenever they have one.
        let add_bos = overrides.add_bos.unwrap_or(match &template {
            Some((tb, _)) => tb.is_some() && bos.is_some(),
            None => bos.is_some(),
        });
        Self::assemble(engine, entries, bos, eos, add_bos)
    }

    /// A tiktoken file ("base64-token rank" per line), in Meta's Llama 3 layout: Llama 3
    /// split pattern, special tokens numbered from the number of ranks on.
    pub fn from_tiktoken(name: &str, data: &[u8], overrides: &SpecialOverrides) -> Result<Self> {
        let text = std::str::from_utf8(data).map_err(|_| Error::format(name, "not UTF-8 text"))?;
        let mut ranks: Vec<(Vec<u8>, u32)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let bad = || {
                Error::format(
                    name,
                    format!("line {}: expected \"<base64 token> <rank>\"", i + 1),
                )
            };
            let mut fields = line.split_ascii_whitespace();
            let (Some(token), Some(rank), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(bad());
            };
            let token = base64_decode(token)
                .filter(|t| !t.is_empty())
                .ok_or_else(bad)?;
            let rank: u32 = rank.parse().map_err(|_| bad())?;
            ranks.push((token, rank));
        }
        let n = ranks.len();
        let mut seen_rank = vec![false; n];
        let mut seen_token: HashSet<&[u8]> = HashSet::with_capacity(n);
        for (token, rank) in &ranks {
            let r = *rank as usize;
            if r >= n || std::mem::replace(&mut seen_rank[r], true) {
                return Err(Error::format(
                    name,
                    format!("ranks must be 0..{n} with no repeats (saw {r})"),
                ));
            }
            if !seen_token.insert(token.as_slice()) {
                return Err(Error::format(
                    name,
                    format!("token of rank {r} appears twice"),
                ));
            }
        }
        if let Some(missing) = (0..=255u8).find(|b| !seen_token.contains(&[*b][..])) {
            return Err(Error::format(
                name,
                format!("no token for the single byte {missing:#04x}"),
            ));
        }

        let specials = overrides
            .tiktoken_specials
            .clone()
            .unwrap_or_else(llama3_special_tokens);
        let merges = merges_from_ranks(&ranks)
            .into_iter()
            .map(|(l, r)| (byte_level_encode(&l), byte_level_encode(&r)))
            .collect();
        let mut entries: Vec<Option<Entry>> = vec![None; n + specials.len()];
        let mut vocab = AHashMap::with_capacity(n);
        for (token, rank) in ranks {
            vocab.insert(byte_level_encode(&token), rank);
            entries[rank as usize] = Some(Entry {
                bytes: token,
                special: false,
            });
        }
        let mut added = Vec::with_capacity(specials.len());
        for (i, special) in specials.iter().enumerate() {
            entries[n + i] = Some(Entry {
                bytes: special.as_bytes().to_vec(),
                special: true,
            });
            added.push(added_token(special, true));
        }
        // Added tokens outside the BPE vocabulary are numbered from its size on, which is
        // exactly the tiktoken layout; check it held (a repeated or empty name breaks it).
        let engine = bpe_engine(vocab, merges, true, &[LLAMA3_PATTERN], added)?;
        for (i, special) in specials.iter().enumerate() {
            if engine.token_to_id(special) != Some((n + i) as u32) {
                return Err(Error::vocab(format!(
                    "special token {special:?} is empty, repeated or also an ordinary token"
                )));
            }
        }

        let default = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| engine.token_to_id(n))
                .filter(|&id| id as usize >= n)
        };
        let bos = match &overrides.bos {
            Some(t) => Some(resolve(&engine, t, "BOS")?),
            None => default(&BOS_NAMES[..1]),
        };
        let eos = match &overrides.eos {
            Some(t) => Some(resolve(&engine, t, "EOS")?),
            None => default(&EOS_NAMES[..1]),
        };
        let add_bos = overrides.add_bos.unwrap_or(bos.is_some());
        Self::assemble(engine, entries, bos, eos, add_bos)
    }

    /// GGUF vocabulary data (tokenizer.ggml.*). Only byte-level BPE ("gpt2") is supported.
    pub fn from_gguf(v: GgufVocab<'_>) -> Result<Self> {
        match v.model {
            "gpt2" => {}
            "llama" => {
                return Err(Error::vocab(
                    "GGUF tokenizer model \"llama\" (SentencePiece) is not supported; \
                     only \"gpt2\" (byte-level BPE) vocabularies are",
                ))
            }
            other => {
                return Err(Error::vocab(format!(
                    "GGUF tokenizer model {other:?} is not supported; only \"gpt2\" (byte-level BPE) is"
                )))
            }
        }
        let pre = PreTokenizer::from_gguf_name(v.pre)?;
        let n = v.tokens.len();
        if !v.token_types.is_empty() && v.token_types.len() != n {
            return Err(Error::vocab(format!(
                "{} token types for {n} tokens",
                v.token_types.len()
            )));
        }
        let check_id = |id: Option<i64>, what: &str| -> Result<Option<u32>> {
            match id {
                Some(i) if i < 0 || i as usize >= n => Err(Error::vocab(format!(
                    "{what} id {i} is outside the {n}-token vocabulary"
                ))),
                other => Ok(other.map(|i| i as u32)),
            }
        };
        let bos = check_id(v.bos_id, "BOS")?;
        let eos = check_id(v.eos_id, "EOS")?;

        let mut vocab = AHashMap::with_capacity(n);
        let mut entries = Vec::with_capacity(n);
        let mut added = Vec::new();
        for (id, token) in v.tokens.iter().enumerate() {
            let kind = v.token_types.get(id).copied().unwrap_or(1);
            // llama.cpp names empty tokens so that they stay distinct.
            let text = if token.is_empty() {
                format!("[EMPTY_{id}]")
            } else {
                token.clone()
            };
            // 2 unknown and 3 control are special: matched in text only when parsing
            // specials. 4 user-defined is always matched. Others are plain BPE tokens.
            let (raw, special) = match kind {
                1 | 5 | 6 | 0 => (false, false),
                2 | 3 => (true, true),
                4 => (true, false),
                other => {
                    return Err(Error::vocab(format!(
                        "token {id} has unknown GGUF type {other}"
                    )))
                }
            };
            if raw {
                added.push(added_token(&text, special));
            }
            let bytes = if raw {
                text.as_bytes().to_vec()
            } else {
                vocab_token_bytes(&text)
            };
            if let Some(first) = vocab.insert(text, id as u32) {
                return Err(Error::vocab(format!(
                    "token {token:?} appears twice (ids {first} and {id})"
                )));
            }
            entries.push(Some(Entry { bytes, special }));
        }
        let mut merges = Vec::with_capacity(v.merges.len());
        for (i, merge) in v.merges.iter().enumerate() {
            // The first half may itself start with a space, so split at the first space after it.
            let split = merge
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(p, _)| p);
            let Some(p) = split else {
                return Err(Error::vocab(format!(
                    "merge {i} ({merge:?}) is not \"<left> <right>\""
                )));
            };
            merges.push((merge[..p].to_owned(), merge[p + 1..].to_owned()));
        }
        let engine = bpe_engine(vocab, merges, pre.ignore_merges(), pre.patterns(), added)?;
        Self::assemble(engine, entries, bos, eos, v.add_bos)
    }

    pub fn vocab_size(&self) -> usize {
        self.entries.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether the model expects prompts to start with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// All special (control) token ids, ascending.
    pub fn special_ids(&self) -> &[u32] {
        &self.special_ids
    }

    /// Validates an id given as a wider integer (Python ints can be anything).
    pub fn check_id(&self, id: i64) -> Result<u32> {
        u32::try_from(id)
            .ok()
            .filter(|&i| matches!(self.entries.get(i as usize), Some(Some(_))))
            .ok_or(Error::TokenId {
                id,
                vocab_size: self.vocab_size(),
            })
    }

    fn entry(&self, id: u32) -> Result<&Entry> {
        match self.entries.get(id as usize) {
            Some(Some(e)) => Ok(e),
            _ => Err(Error::TokenId {
                id: i64::from(id),
                vocab_size: self.vocab_size(),
            }),
        }
    }

    pub fn is_special(&self, id: u32) -> Result<bool> {
        Ok(self.entry(id)?.special)
    }

    /// The exact bytes an id stands for (special tokens: their text).
    pub fn token_bytes(&self, id: u32) -> Result<&[u8]> {
        Ok(&self.entry(id)?.bytes)
    }

    /// The vocabulary spelling of an id (byte-level, e.g. "Ġthe").
    pub fn id_to_token(&self, id: u32) -> Result<String> {
        self.entry(id)?;
        self.parsing.id_to_token(id).ok_or(Error::TokenId {
            id: i64::from(id),
            vocab_size: self.vocab_size(),
        })
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.parsing.token_to_id(token)
    }

    /// Text to ids. With `parse_special`, special-token text becomes the special id;
    /// without, it is encoded like any other text.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<u32>> {
        let engine = if parse_special {
            &self.parsing
        } else {
            &self.literal
        };
        let encoding = engine
            .encode_fast(text, false)
            .map_err(|e| Error::Encode(e.to_string()))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if add_bos {
            ids.push(self.bos.ok_or_else(|| {
                Error::vocab("add_bos was asked for but the tokenizer has no BOS token")
            })?);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Ids to text; byte sequences that are not UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids, skip_special)?).into_owned())
    }

    pub fn decode_bytes(&self, ids: &[u32], skip_special: bool) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let e = self.entry(id)?;
            if !(skip_special && e.special) {
                out.extend_from_slice(&e.bytes);
            }
        }
        Ok(out)
    }
}

fn resolve(engine: &Engine, token: &str, what: &str) -> Result<u32> {
    engine
        .token_to_id(token)
        .ok_or_else(|| Error::vocab(format!("{what} token {token:?} is not in the vocabulary")))
}

fn mentions_byte_level(v: &serde_json::Value) -> bool {
    match v.get("type").and_then(|t| t.as_str()) {
        Some("ByteLevel") => true,
        Some("Sequence") => ["decoders", "pretokenizers"]
            .iter()
            .filter_map(|k| v.get(*k).and_then(|s| s.as_array()))
            .flatten()
            .any(mentions_byte_level),
        _ => false,
    }
}

/// BOS/EOS named by a TemplateProcessing post-processor: the special token before and
/// after `$A` in the single-sequence template.
fn template_specials(pp: &serde_json::Value) -> Option<(Option<String>, Option<String>)> {
    match pp.get("type")?.as_str()? {
        "TemplateProcessing" => {
            let single = pp.get("single")?.as_array()?;
            let special = |p: &serde_json::Value| {
                p.pointer("/SpecialToken/id")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            let seq = single.iter().position(|p| p.get("Sequence").is_some())?;
            let bos = single[..seq].iter().find_map(special);
            let eos = single[seq + 1..].iter().find_map(special);
            Some((bos, eos))
        }
        "Sequence" => pp
            .get("processors")?
            .as_array()?
            .iter()
            .find_map(template_specials),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let text = byte_level_encode(&all);
        assert_eq!(text.chars().count(), 256);
        assert_eq!(byte_level_decode(&text).unwrap(), all);
        assert_eq!(byte_level_encode(b" the\n"), "ĠtheĊ");
        assert_eq!(byte_level_decode("€"), None);
    }

    #[test]
    fn base64_matches_known_values() {
        assert_eq!(base64_decode("IQ==").unwrap(), b"!");
        assert_eq!(base64_decode("IGlu").unwrap(), b" in");
        assert_eq!(base64_decode("4oCc").unwrap(), "\u{201c}".as_bytes());
        assert_eq!(base64_decode("YWI").unwrap(), b"ab");
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("a*==").is_none());
    }

    #[test]
    fn pre_tokenizer_names_select_llama_cpp_patterns() {
        let p = |n| PreTokenizer::from_gguf_name(n).unwrap();
        assert_eq!(p("llama-bpe"), PreTokenizer::Llama3);
        assert_eq!(p("llama3"), PreTokenizer::Llama3);
        assert_eq!(p("smollm"), PreTokenizer::SmolLm);
        assert_eq!(p("gpt2"), PreTokenizer::Gpt2);
        assert_eq!(p("default"), PreTokenizer::Default);
        assert_eq!(p("smollm").patterns(), &[r"\p{N}", GPT2_PATTERN]);
        assert_eq!(p("default").patterns().len(), 4);
        assert!(p("llama-bpe").ignore_merges() && !p("smollm").ignore_merges());
        let err = PreTokenizer::from_gguf_name("mystery").unwrap_err();
        assert!(err.to_string().contains("\"mystery\""), "{err}");
    }

    /// Splits text the way a pre-tokenizer does, to check the regex lists in isolation.
    fn pieces(kind: PreTokenizer, text: &str) -> Vec<String> {
        use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer as _};
        let pre = pre_tokenizer(kind.patterns()).unwrap();
        let mut s = PreTokenizedString::from(text);
        pre.pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(p, _, _)| String::from_utf8(byte_level_decode(p).unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn pre_tokenizers_split_digits_as_llama_cpp_does() {
        assert_eq!(
            pieces(PreTokenizer::Llama3, "x 12345"),
            ["x", " ", "123", "45"]
        );
        assert_eq!(
            pieces(PreTokenizer::SmolLm, "x 123"),
            ["x", " ", "1", "2", "3"]
        );
        assert_eq!(pieces(PreTokenizer::Gpt2, "x 123"), ["x", " 123"]);
        assert_eq!(pieces(PreTokenizer::Qwen2, "ab12"), ["ab", "1", "2"]);
        assert_eq!(
            pieces(PreTokenizer::Llama3, "I'LL go\r\n\n  x"),
            ["I", "'LL", " go", "\r\n\n", " ", " x"]
        );
        assert_eq!(
            pieces(PreTokenizer::Default, "a+b 1234"),
            ["a", "+", "b", " ", "123", "4"]
        );
    }

    /// tiktoken's rule, written directly: merge the adjacent pair whose concatenation has
    /// the lowest rank, leftmost first, until none is in the vocabulary.
    fn tiktoken_reference(ranks: &HashMap<Vec<u8>, u32>, word: &[u8]) -> Vec<u32> {
        if let Some(&r) = ranks.get(word) {
            return vec![r];
        }
        let mut parts: Vec<Vec<u8>> = word.iter().map(|&b| vec![b]).collect();
        loop {
            let best = (0..parts.len().saturating_sub(1))
                .filter_map(|i| {
                    ranks
                        .get(&[parts[i].clone(), parts[i + 1].clone()].concat())
                        .map(|&r| (r, i))
                })
                .min();
            let Some((_, i)) = best else { break };
            let right = parts.remove(i + 1);
            parts[i].extend(right);
        }
        parts.iter().map(|p| ranks[p]).collect()
    }

    fn tiny_tiktoken() -> (Tokenizer, HashMap<Vec<u8>, u32>) {
        // Every byte must exist, as in any tiktoken file; a few multi-byte tokens on top.
        let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for t in [
            "ab", "bc", "abc", "ca", "cab", "bb", "abb", "bca", "aa", "aaa",
        ] {
            tokens.push(t.as_bytes().to_vec());
        }
        // Shuffle ranks deterministically so longer tokens are not always ranked last.
        let order = [5usize, 2, 8, 0, 9, 1, 7, 3, 6, 4];
        let mut lines = String::new();
        let mut ranks = HashMap::new();
        let encode64 = |bytes: &[u8]| {
            const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut s = String::new();
            for chunk in bytes.chunks(3) {
                let v = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b))
                    << (8 * (3 - chunk.len()));
                for k in 0..=chunk.len() {
                    s.push(A[((v >> (18 - 6 * k)) & 63) as usize] as char);
                }
            }
            s
        };
        for (i, t) in tokens.iter().enumerate() {
            let rank = if i < 256 {
                i as u32
            } else {
                256 + order[i - 256] as u32
            };
            lines.push_str(&format!("{} {rank}\n", encode64(t)));
            ranks.insert(t.clone(), rank);
        }
        let overrides = SpecialOverrides {
            tiktoken_specials: Some(vec!["<|begin_of_text|>".into(), "<|end_of_text|>".into()]),
            ..Default::default()
        };
        (
            Tokenizer::from_tiktoken("tiny", lines.as_bytes(), &overrides).unwrap(),
            ranks,
        )
    }

    #[test]
    fn merges_from_ranks_reproduce_tiktoken() {
        let (tok, ranks) = tiny_tiktoken();
        assert_eq!(tok.vocab_size(), 268);
        assert_eq!(tok.bos_id(), Some(266));
        assert_eq!(tok.eos_id(), Some(267));
        // Every word over {a, b, c} up to length 7: a word is one pre-token (all letters).
        let mut words = vec![Vec::new()];
        for _ in 0..7 {
            let longer: Vec<Vec<u8>> = words
                .iter()
                .filter(|w| w.len() == words.last().unwrap().len())
                .flat_map(|w| b"abc".iter().map(move |&c| [w.clone(), vec![c]].concat()))
                .collect();
            words.extend(longer);
        }
        for word in words.iter().filter(|w| !w.is_empty()) {
            let text = std::str::from_utf8(word).unwrap();
            let ours = tok.encode(text, false, false).unwrap();
            assert_eq!(ours, tiktoken_reference(&ranks, word), "word {text:?}");
            assert_eq!(tok.decode(&ours, false).unwrap(), text);
        }
    }

    #[test]
    fn specials_parse_only_when_asked() {
        let (tok, _) = tiny_tiktoken();
        let text = "ab<|end_of_text|>";
        assert_eq!(tok.encode(text, false, true).unwrap().last(), Some(&267));
        let literal = tok.encode(text, true, false).unwrap();
        assert_eq!(literal[0], 266);
        assert!(!literal[1..].contains(&267));
        assert_eq!(tok.decode(&literal[1..], false).unwrap(), text);
        assert_eq!(tok.decode(&[266, 0], true).unwrap(), "\0");
        assert_eq!(tok.special_ids(), &[266, 267]);
    }

    #[test]
    fn out_of_range_ids_are_errors() {
        let (tok, _) = tiny_tiktoken();
        assert_eq!(
            tok.decode(&[268], false),
            Err(Error::TokenId {
                id: 268,
                vocab_size: 268
            })
        );
        assert!(tok.token_bytes(u32::MAX).is_err());
        assert!(tok.check_id(-3).is_err());
        assert_eq!(tok.check_id(5), Ok(5));
        assert!(tok.id_to_token(9999).is_err());
    }

    #[test]
    fn bad_tiktoken_files_say_what_is_wrong() {
        let o = SpecialOverrides::default();
        let err = Tokenizer::from_tiktoken("m", b"IQ== 0\nnot-base64 1\n", &o).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = Tokenizer::from_tiktoken("m", b"IQ== 0\nIg== 0\n", &o).unwrap_err();
        assert!(err.to_string().contains("repeats"), "{err}");
    }

    fn gguf_tokens() -> (Vec<String>, Vec<i32>) {
        let mut tokens = vec!["<|endoftext|>".to_string(), "<tool>".to_string()];
        tokens.extend((0..=255u8).map(|b| byte_level_encode(&[b])));
        tokens.extend(["Ġa", "Ġab", "12"].map(String::from));
        let mut types = vec![3, 4];
        types.extend(std::iter::repeat_n(1, 259));
        (tokens, types)
    }

    fn gguf(model: &str, pre: &str) -> Result<Tokenizer> {
        let (tokens, types) = gguf_tokens();
        let merges = ["Ġ a", "Ġa b", "1 2"].map(String::from);
        Tokenizer::from_gguf(GgufVocab {
            model,
            pre,
            tokens: &tokens,
            merges: &merges,
            token_types: &types,
            bos_id: Some(0),
            eos_id: Some(0),
            add_bos: false,
        })
    }

    #[test]
    fn gguf_vocab_uses_types_and_pre_tokenizer() {
        let tok = gguf("gpt2", "smollm").unwrap();
        let id = |t: &str| tok.token_to_id(t).unwrap();
        assert_eq!(tok.encode(" ab", false, false).unwrap(), [id("Ġab")]);
        // smollm splits digits apart, so "12" never merges; gpt2 keeps them together.
        assert_eq!(tok.encode("12", false, false).unwrap(), [id("1"), id("2")]);
        let gpt2 = gguf("gpt2", "gpt2").unwrap();
        assert_eq!(gpt2.encode("12", false, false).unwrap(), [id("12")]);
        // Control tokens parse only on request; user-defined ones always do.
        assert_eq!(tok.encode("<|endoftext|>", false, true).unwrap(), [0]);
        assert_ne!(tok.encode("<|endoftext|>", false, false).unwrap(), [0]);
        assert_eq!(tok.encode("<tool>", false, false).unwrap(), [1]);
        assert_eq!(tok.special_ids(), &[0]);
        assert!(!tok.is_special(1).unwrap());
        assert_eq!(tok.token_bytes(id("Ġab")).unwrap(), b" ab");
        assert_eq!(tok.id_to_token(id("Ġab")).unwrap(), "Ġab");
    }

    #[test]
    fn gguf_rejects_sentencepiece_and_unknown_pre() {
        let err = gguf("llama", "default").unwrap_err().to_string();
        assert!(err.contains("SentencePiece"), "{err}");
        let err = gguf("gpt2", "nonesuch").unwrap_err().to_string();
        assert!(err.contains("nonesuch"), "{err}");
    }
}
