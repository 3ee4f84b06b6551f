//! JSON schemas compiled into grammars, once per schema: one `Grammars` per model (its
//! tokenizer, stop tokens and logits width) holds llguidance's parser factory and a bounded
//! cache keyed by the schema's canonical text.
//!
//! A schema that is too large is refused before compiling; compiling runs under llguidance's
//! size and fuel limits and a wall-clock limit, so no schema can stall a request.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::TokEnv;
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::constrain::token_env::TokenEnv;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Bounds on what a schema may cost before any token is generated.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Schema text longer than this is refused unread.
    pub max_schema_bytes: usize,
    /// Compiling longer than this is refused (the compile itself stops at llguidance's fuel limit).
    pub compile_timeout: Duration,
    /// Compiled grammars kept; the least recently used goes first.
    pub cache_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_schema_bytes: 256 * 1024,
            compile_timeout: Duration::from_secs(2),
            cache_entries: 64,
        }
    }
}

/// Whitespace between JSON tokens: one space, or a newline and an indent of up to 20 (as
/// llama.cpp's JSON grammars allow). Unbounded whitespace lets a small model pad forever.
const WHITESPACE: &str = r"(\x20|\x0A[\x20\x09]{0,20})";

/// A compiled schema: a fresh matcher to clone for each generation, and the mask width.
#[derive(Clone)]
pub struct Grammar {
    pub(crate) matcher: Matcher,
    pub mask_words: usize,
}

/// What `Grammars::compile` did.
pub struct Compiled {
    pub grammar: Grammar,
    pub compile_ns: u64,
    pub cached: bool,
}

struct Cache {
    entries: HashMap<String, (Grammar, u64)>,
    clock: u64,
}

pub struct Grammars {
    factory: Arc<ParserFactory>,
    mask_words: usize,
    limits: Limits,
    cache: Mutex<Cache>,
}

impl Grammars {
    /// The factory for one model: its token trie and slices take about 0.2 s to build for a
    /// 50k vocabulary, so it is made once and shared by every schema.
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        stop_ids: &[u32],
        logit_vocab: usize,
        limits: Limits,
    ) -> Result<Self> {
        let env: TokEnv = Arc::new(TokenEnv::new(tokenizer, stop_ids, logit_vocab)?);
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| Error::Grammar(format!("cannot set up the grammar engine: {e}")))?;
        factory.quiet();
        // Errors carry the parser state and grammar otherwise: too much for a one-line reply.
        factory.limits_mut().verbose_errors = false;
        Ok(Grammars {
            factory: Arc::new(factory),
            mask_words: logit_vocab.div_ceil(32),
            limits,
            cache: Mutex::new(Cache {
                entries: HashMap::new(),
                clock: 0,
            }),
        })
    }

    pub fn mask_words(&self) -> usize {
        self.mask_words
    }

    /// The grammar for a JSON schema given as text, from the cache when the same schema
    /// (whatever its spacing) was compiled before.
    pub fn compile(&self, schema_text: &str) -> Result<Compiled> {
        let start = Instant::now();
        let size = schema_text.len();
        if size > self.limits.max_schema_bytes {
            return Err(Error::Grammar(format!(
                "the schema is {size} bytes, more than the limit of {}",
                self.limits.max_schema_bytes
            )));
        }
        let schema: Value = serde_json::from_str(schema_text)
            .map_err(|e| Error::Grammar(format!("the schema is not valid JSON: {e}")))?;
        if !schema.is_object() {
            return Err(Error::Grammar(format!(
                "a JSON schema must be an object, got {}",
                kind(&schema)
            )));
        }
        // Property order shapes the output (serde_json keeps it here), so it stays in the key.
        let key = schema.to_string();
        if let Some(grammar) = self.cached(&key) {
            return Ok(Compiled {
                grammar,
                compile_ns: elapsed_ns(start),
                cached: true,
            });
        }
        let matcher = self.compile_bounded(with_whitespace_limit(schema))?;
        let grammar = Grammar {
            matcher,
            mask_words: self.mask_words,
        };
        self.remember(key, grammar.clone());
        Ok(Compiled {
            grammar,
            compile_ns: elapsed_ns(start),
            cached: false,
        })
    }

    fn compile_bounded(&self, schema: Value) -> Result<Matcher> {
        let factory = self.factory.clone();
        let (sender, receiver) = mpsc::sync_channel(1);
        // A thread of its own, so a compile past the time limit is abandoned, not waited for;
        // llguidance's fuel limits end it soon after.
        std::thread::Builder::new()
            .name("lljx-grammar".into())
            .spawn(move || {
                let parser = factory.create_parser(TopLevelGrammar::from_json_schema(schema));
                let _ = sender.send(parser.map(|p| Matcher::new(Ok(p))));
            })
            .map_err(|e| Error::Grammar(format!("cannot start compiling the schema: {e}")))?;
        let timeout = self.limits.compile_timeout;
        match receiver.recv_timeout(timeout) {
            Ok(Ok(matcher)) => match matcher.get_error() {
                None => Ok(matcher),
                Some(e) => Err(Error::Grammar(engine_message(&e))),
            },
            Ok(Err(e)) => Err(Error::Grammar(engine_message(&e.to_string()))),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::Grammar(format!(
                "the schema took longer than {} ms to compile",
                timeout.as_millis()
            ))),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(Error::Grammar("the schema compiler failed".into()))
            }
        }
    }

    fn cached(&self, key: &str) -> Option<Grammar> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.clock += 1;
        let now = cache.clock;
        cache.entries.get_mut(key).map(|(grammar, used)| {
            *used = now;
            grammar.clone()
        })
    }

    fn remember(&self, key: String, grammar: Grammar) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.clock += 1;
        let now = cache.clock;
        while cache.entries.len() >= self.limits.cache_entries.max(1) {
            let oldest = cache
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => cache.entries.remove(&k),
                None => break,
            };
        }
        cache.entries.insert(key, (grammar, now));
    }

    pub fn cached_count(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .len()
    }
}

/// Bounded whitespace unless the schema sets its own through llguidance's `x-guidance` options.
fn with_whitespace_limit(mut schema: Value) -> Value {
    if let Some(map) = schema.as_object_mut() {
        if !map.contains_key("x-guidance") {
            map.insert(
                "x-guidance".into(),
                serde_json::json!({ "whitespace_pattern": WHITESPACE }),
            );
        }
    }
    schema
}

/// llguidance's message, on one line and without its internal context lines.
fn engine_message(message: &str) -> String {
    let first = message
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(message);
    let text = first.trim();
    format!("unsupported or invalid schema: {text}")
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn elapsed_ns(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
