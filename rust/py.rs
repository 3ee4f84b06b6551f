//! Python bindings, the only module that touches pyo3: thin classes over the core types,
//! the GIL released around real work, core errors mapped to this module's exceptions.
//! The batched token loop's driver lives in the submodule `batch`.

mod batch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{
    PyBool, PyBytes, PyCapsule, PyDict, PyFloat, PyInt, PyList, PyMapping, PyString, PyTuple,
};

use crate::chat::{ChatTemplate, Clock, Data};
use crate::constrain::{Allowed, Grammar, Grammars, Limits, Masks, RowConstraint};
use crate::detokenize::StreamDecoder;
use crate::error::Error;
use crate::token_loop::{Stats, StopReason, TokenLoop};
use crate::tokenizer::{GgufVocab, SpecialOverrides, Tokenizer};

pyo3::create_exception!(
    lljx._native,
    TokenizerError,
    PyValueError,
    "A tokenizer file, vocabulary or token id that cannot be used."
);
pyo3::create_exception!(
    lljx._native,
    TemplateError,
    PyValueError,
    "A chat template that does not compile or fails to render."
);
pyo3::create_exception!(
    lljx._native,
    GrammarError,
    PyValueError,
    "A JSON schema that cannot be compiled into a grammar, or a grammar that failed mid-reply."
);

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        match err {
            Error::Template(_) => TemplateError::new_err(err.to_string()),
            Error::Grammar(_) => GrammarError::new_err(err.to_string()),
            Error::Io { .. }
            | Error::Format { .. }
            | Error::Vocab(_)
            | Error::TokenId { .. }
            | Error::Encode(_) => TokenizerError::new_err(err.to_string()),
        }
    }
}

#[pyclass(frozen, module = "lljx._native", name = "Tokenizer")]
struct PyTokenizer {
    inner: Arc<Tokenizer>,
}

fn ids_from(tokenizer: &Tokenizer, ids: &[i64]) -> Result<Vec<u32>, Error> {
    ids.iter().map(|&id| tokenizer.check_id(id)).collect()
}

#[pymethods]
impl PyTokenizer {
    #[staticmethod]
    #[pyo3(signature = (path, *, bos=None, eos=None, add_bos=None, tiktoken_specials=None))]
    fn from_file(
        py: Python<'_>,
        path: PathBuf,
        bos: Option<String>,
        eos: Option<String>,
        add_bos: Option<bool>,
        tiktoken_specials: Option<Vec<String>>,
    ) -> PyResult<Self> {
        let overrides = SpecialOverrides {
            bos,
            eos,
            add_bos,
            tiktoken_specials,
        };
        let inner = py.detach(|| Tokenizer::from_file(&path, &overrides))?;
        Ok(PyTokenizer {
            inner: Arc::new(inner),
        })
    }

    #[staticmethod]
    #[pyo3(signature = (*, model, pre, tokens, merges, token_types, bos_id, eos_id, add_bos))]
    #[allow(clippy::too_many_arguments)]
    fn from_gguf_vocab(
        py: Python<'_>,
        model: String,
        pre: String,
        tokens: StringArray,
        merges: StringArray,
        token_types: Vec<i32>,
        bos_id: Option<i64>,
        eos_id: Option<i64>,
        add_bos: bool,
    ) -> PyResult<Self> {
        let (tokens, merges) =
            py.detach(|| Ok::<_, PyErr>((tokens.strings()?, merges.strings()?)))?;
        let vocab = GgufVocab {
            model: &model,
            pre: &pre,
            tokens: &tokens,
            merges: &merges,
            token_types: &token_types,
            bos_id,
            eos_id,
            add_bos,
        };
        let inner = py.detach(|| Tokenizer::from_gguf(vocab))?;
        Ok(PyTokenizer {
            inner: Arc::new(inner),
        })
    }

    #[pyo3(signature = (text, *, add_bos, parse_special))]
    fn encode(
        &self,
        py: Python<'_>,
        text: &str,
        add_bos: bool,
        parse_special: bool,
    ) -> PyResult<Vec<u32>> {
        Ok(py.detach(|| self.inner.encode(text, add_bos, parse_special))?)
    }

    #[pyo3(signature = (ids, *, skip_special))]
    fn decode(&self, py: Python<'_>, ids: Vec<i64>, skip_special: bool) -> PyResult<String> {
        let ids = ids_from(&self.inner, &ids)?;
        Ok(py.detach(|| self.inner.decode(&ids, skip_special))?)
    }

    fn token_bytes<'py>(&self, py: Python<'py>, id: i64) -> PyResult<Bound<'py, PyBytes>> {
        let id = self.inner.check_id(id)?;
        Ok(PyBytes::new(py, self.inner.token_bytes(id)?))
    }

    fn id_to_token(&self, id: i64) -> PyResult<String> {
        let id = self.inner.check_id(id)?;
        Ok(self.inner.id_to_token(id)?)
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn is_special(&self, id: i64) -> PyResult<bool> {
        let id = self.inner.check_id(id)?;
        Ok(self.inner.is_special(id)?)
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    #[getter]
    fn bos_id(&self) -> Option<u32> {
        self.inner.bos_id()
    }

    #[getter]
    fn eos_id(&self) -> Option<u32> {
        self.inner.eos_id()
    }

    #[getter]
    fn add_bos(&self) -> bool {
        self.inner.add_bos()
    }

    #[getter]
    fn special_ids(&self) -> Vec<u32> {
        self.inner.special_ids().to_vec()
    }

    #[pyo3(signature = (*, skip_special))]
    fn stream_decoder(&self, skip_special: bool) -> PyStreamDecoder {
        PyStreamDecoder {
            inner: StreamDecoder::new(self.inner.clone(), skip_special),
        }
    }
}

#[pyclass(module = "lljx._native", name = "StreamDecoder")]
struct PyStreamDecoder {
    inner: StreamDecoder,
}

#[pymethods]
impl PyStreamDecoder {
    fn push(&mut self, id: i64) -> PyResult<String> {
        let id = self.inner.tokenizer().check_id(id)?;
        Ok(self.inner.push(id)?)
    }

    fn flush(&mut self) -> String {
        self.inner.flush()
    }
}

#[pyclass(frozen, module = "lljx._native", name = "ChatTemplate")]
struct PyChatTemplate {
    inner: ChatTemplate,
}

/// Nesting deep enough for any real conversation, shallow enough to stop cycles.
const MAX_DEPTH: usize = 64;

fn to_data(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Data> {
    if depth > MAX_DEPTH {
        return Err(TemplateError::new_err(
            "chat template data is nested too deeply (or contains itself)",
        ));
    }
    let items = |seq: Vec<Bound<'_, PyAny>>| -> PyResult<Data> {
        Ok(Data::List(
            seq.iter()
                .map(|v| to_data(v, depth + 1))
                .collect::<PyResult<_>>()?,
        ))
    };
    Ok(if obj.is_none() {
        Data::None
    } else if let Ok(b) = obj.cast::<PyBool>() {
        Data::Bool(b.is_true())
    } else if let Ok(i) = obj.cast::<PyInt>() {
        Data::Int(i.extract().map_err(|_| {
            TemplateError::new_err(format!("integer {i} is too large for a chat template"))
        })?)
    } else if let Ok(f) = obj.cast::<PyFloat>() {
        Data::Float(f.value())
    } else if let Ok(s) = obj.cast::<PyString>() {
        Data::Str(s.to_str()?.to_owned())
    } else if let Ok(list) = obj.cast::<PyList>() {
        items(list.iter().collect())?
    } else if let Ok(tuple) = obj.cast::<PyTuple>() {
        items(tuple.iter().collect())?
    } else if let Ok(dict) = obj.cast::<PyDict>() {
        Data::Map(map_pairs(dict.iter().collect(), depth)?)
    } else if let Ok(mapping) = obj.cast::<PyMapping>() {
        let pairs = mapping
            .items()?
            .iter()
            .map(|kv| kv.extract())
            .collect::<PyResult<Vec<_>>>()?;
        Data::Map(map_pairs(pairs, depth)?)
    } else {
        let type_name = obj.get_type().name()?;
        return Err(TemplateError::new_err(format!(
            "a {type_name} cannot be passed to a chat template"
        )));
    })
}

fn map_pairs(
    pairs: Vec<(Bound<'_, PyAny>, Bound<'_, PyAny>)>,
    depth: usize,
) -> PyResult<Vec<(String, Data)>> {
    let mut out = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        let key = k
            .cast::<PyString>()
            .map_err(|_| {
                TemplateError::new_err(format!(
                    "chat template map keys must be str, not {}",
                    k.get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            })?
            .to_str()?
            .to_owned();
        out.push((key, to_data(&v, depth + 1)?));
    }
    Ok(out)
}

#[pymethods]
impl PyChatTemplate {
    #[new]
    #[pyo3(signature = (source, *, bos_token, eos_token))]
    fn new(source: Option<&str>, bos_token: &str, eos_token: &str) -> PyResult<Self> {
        Ok(PyChatTemplate {
            inner: ChatTemplate::new(source, bos_token, eos_token)?,
        })
    }

    /// `utc_offset` is the local offset in seconds, which only Python knows portably.
    #[pyo3(signature = (messages, *, add_generation_prompt, extra, utc_offset))]
    fn render(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        add_generation_prompt: bool,
        extra: &Bound<'_, PyDict>,
        utc_offset: i64,
    ) -> PyResult<String> {
        let messages = to_data(messages, 0)?;
        let extra = map_pairs(extra.iter().collect(), 0)?;
        let unix_seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let clock = Clock {
            unix_seconds,
            utc_offset_seconds: utc_offset,
        };
        Ok(py.detach(|| {
            self.inner
                .render(messages, add_generation_prompt, extra, clock)
        })?)
    }
}

/// The generation loop: prefill, then decode with one call dispatched ahead of the
/// tokens being read, so the device never waits for the host. Iterating yields text.
#[pyclass(module = "lljx._native", name = "TokenLoop", unsendable)]
struct PyTokenLoop {
    decoder: Py<PyAny>,
    prompt_ids: Py<PyAny>,
    plan: Py<PyAny>,
    settings: Py<PyAny>,
    core: TokenLoop,
    /// The device result whose tokens are read next.
    pending: Option<Py<PyAny>>,
    started: Option<Instant>,
    done: bool,
    /// The grammar's side of a constrained generation (None: unconstrained).
    constrained: Option<Constrained>,
}

fn elapsed_ns(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl PyTokenLoop {
    /// Reads the newest token ids of row 0 back to the host. `block_until_ready` waits
    /// with the GIL released (jaxlib drops it), so other Python threads keep running.
    fn read_tokens(py: Python<'_>, tokens: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
        tokens.call_method0("block_until_ready")?;
        let host = py.import("numpy")?.call_method1("asarray", (tokens,))?;
        host.get_item(0)?.call_method0("tolist")?.extract()
    }

    fn advance(&mut self, py: Python<'_>) -> PyResult<String> {
        if self.constrained.is_some() {
            return self.advance_constrained(py);
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        let state = match self.pending.take() {
            Some(state) => state.into_bound(py),
            None => self.decoder.bind(py).call_method1(
                "prefill",
                (
                    self.prompt_ids.bind(py),
                    self.plan.bind(py),
                    self.settings.bind(py),
                ),
            )?,
        };
        let tokens = state.getattr("tokens")?;
        let following = if self.core.wants_more() {
            Some(self.decoder.bind(py).call_method1("decode", (&state,))?)
        } else {
            None
        };
        let ids = Self::read_tokens(py, &tokens)?;
        let mut step = self.core.on_tokens(&ids, elapsed_ns(started))?;
        match following {
            Some(next) if !step.finished => self.pending = Some(next.unbind()),
            _ => {
                step.text.push_str(&self.core.end(StopReason::Length).text);
                self.done = true;
                self.core.set_total(elapsed_ns(started));
            }
        }
        Ok(step.text)
    }
}

#[pymethods]
impl PyTokenLoop {
    /// With a `grammar`, every token is sampled under its mask through the decoder's split
    /// step (`prefill_logits`, `forward`, `sample`, `force`), and the reply ends when it is complete.
    #[new]
    #[pyo3(signature = (decoder, tokenizer, prompt_ids, plan, *, max_tokens, stop_ids, stop_strings, settings, grammar=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        decoder: Py<PyAny>,
        tokenizer: &PyTokenizer,
        prompt_ids: Py<PyAny>,
        plan: Py<PyAny>,
        max_tokens: usize,
        stop_ids: Vec<u32>,
        stop_strings: Vec<String>,
        settings: Py<PyAny>,
        grammar: Option<PyRef<'_, PyGrammar>>,
        py: Python<'_>,
    ) -> PyResult<Self> {
        let prompt_tokens = prompt_ids.bind(py).len()?;
        let constrained = grammar.map(|g| Constrained::new(&g.inner));
        Ok(PyTokenLoop {
            decoder,
            prompt_ids,
            plan,
            settings,
            core: TokenLoop::new(
                tokenizer.inner.clone(),
                prompt_tokens,
                max_tokens,
                stop_ids,
                stop_strings,
            ),
            pending: None,
            started: None,
            done: max_tokens == 0,
            constrained,
        })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<String>> {
        while !self.done {
            let text = self.advance(py).inspect_err(|_| self.done = true)?;
            if !text.is_empty() {
                return Ok(Some(text));
            }
        }
        Ok(None)
    }

    /// Stops early (a client went away): no more device calls are made.
    fn close(&mut self) {
        if !self.done {
            self.core.end(StopReason::Stop);
            self.done = true;
            self.pending = None;
            if let Some(started) = self.started {
                self.core.set_total(elapsed_ns(started));
            }
        }
    }

    #[getter]
    fn token_ids(&self) -> Vec<u32> {
        self.core.token_ids.clone()
    }

    /// Counts and nanosecond timings; `stop_reason` is "stop", "length" or "" while running.
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, &self.core.stats)
    }
}

/// Stats as the dict `lljx.generation.Stats` is built from.
fn stats_dict<'py>(py: Python<'py>, s: &Stats) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("prompt_tokens", s.prompt_tokens)?;
    out.set_item("gen_tokens", s.gen_tokens)?;
    out.set_item("tokens_read", s.tokens_read)?;
    out.set_item("ttft_ns", s.ttft_ns)?;
    out.set_item("prefill_ns", s.prefill_ns)?;
    out.set_item("decode_ns", s.decode_ns)?;
    out.set_item("total_ns", s.total_ns)?;
    out.set_item("token_ns", s.token_ns.clone())?;
    out.set_item("mask_ns", s.mask_ns.clone())?;
    out.set_item("stop_reason", s.stop_reason.map_or("", StopReason::as_str))?;
    Ok(out)
}

// ---- Structured output: compiled grammars and the constrained token loop ----

/// The compiled JSON-schema grammars of one model (its tokenizer, stop tokens and logits
/// width), cached by schema.
#[pyclass(frozen, module = "lljx._native", name = "Grammars")]
struct PyGrammars {
    inner: Grammars,
}

#[pymethods]
impl PyGrammars {
    #[new]
    #[pyo3(signature = (tokenizer, *, stop_ids, vocab_size, max_schema_bytes=None, compile_timeout_ms=None, cache_entries=None))]
    fn new(
        py: Python<'_>,
        tokenizer: &PyTokenizer,
        stop_ids: Vec<u32>,
        vocab_size: usize,
        max_schema_bytes: Option<usize>,
        compile_timeout_ms: Option<u64>,
        cache_entries: Option<usize>,
    ) -> PyResult<Self> {
        let defaults = Limits::default();
        let limits = Limits {
            max_schema_bytes: max_schema_bytes.unwrap_or(defaults.max_schema_bytes),
            compile_timeout: compile_timeout_ms
                .map_or(defaults.compile_timeout, std::time::Duration::from_millis),
            cache_entries: cache_entries.unwrap_or(defaults.cache_entries),
        };
        let tokenizer = tokenizer.inner.clone();
        let inner = py.detach(|| Grammars::new(tokenizer, &stop_ids, vocab_size, limits))?;
        Ok(PyGrammars { inner })
    }

    /// (grammar, compile_ns, cached) for a JSON schema given as text.
    fn compile(&self, py: Python<'_>, schema: &str) -> PyResult<(PyGrammar, u64, bool)> {
        let compiled = py.detach(|| self.inner.compile(schema))?;
        let grammar = PyGrammar {
            inner: compiled.grammar,
        };
        Ok((grammar, compiled.compile_ns, compiled.cached))
    }

    #[getter]
    fn mask_words(&self) -> usize {
        self.inner.mask_words()
    }

    #[getter]
    fn cached(&self) -> usize {
        self.inner.cached_count()
    }
}

/// One compiled schema; each generation follows its own copy.
#[pyclass(frozen, module = "lljx._native", name = "Grammar")]
struct PyGrammar {
    inner: Grammar,
}

#[pymethods]
impl PyGrammar {
    /// The token ids the grammar allows after `prefix` (ids it has already accepted).
    fn allowed_after(&self, py: Python<'_>, prefix: Vec<u32>) -> PyResult<Vec<u32>> {
        let grammar = self.inner.clone();
        Ok(py.detach(move || -> Result<Vec<u32>, Error> {
            let mut row = RowConstraint::new(&grammar);
            for id in prefix {
                row.consume(id)?;
            }
            let mut mask = vec![0u32; grammar.mask_words];
            row.fill(&mut mask)?;
            Ok((0..grammar.mask_words as u32 * 32)
                .filter(|&t| mask[t as usize / 32] >> (t % 32) & 1 == 1)
                .collect())
        })?)
    }

    /// Whether the grammar is complete after `ids` (nothing more may follow).
    fn is_complete_after(&self, py: Python<'_>, ids: Vec<u32>) -> PyResult<bool> {
        let grammar = self.inner.clone();
        Ok(py.detach(move || -> Result<bool, Error> {
            let mut row = RowConstraint::new(&grammar);
            for id in ids {
                row.consume(id)?;
            }
            Ok(row.is_complete())
        })?)
    }

    #[getter]
    fn mask_words(&self) -> usize {
        self.inner.mask_words
    }
}

/// The grammar side of a constrained generation: one masked row (the loop runs batch 1).
struct Constrained {
    masks: Masks,
    /// The pending state's tokens when the grammar forced them: known here, nothing to read back.
    forced: Option<Vec<i64>>,
}

impl Constrained {
    fn new(grammar: &Grammar) -> Self {
        Constrained {
            masks: Masks::new(vec![Some(RowConstraint::new(grammar))], grammar.mask_words),
            forced: None,
        }
    }
}

impl PyTokenLoop {
    /// One step of a constrained generation, through the decoder's split step:
    /// dispatch the forward pass of the token being read, read it, let the grammar take it,
    /// compute the next mask while the forward pass runs, then dispatch the masked sample
    /// (or, when the grammar allows one token only, take it without sampling).
    fn advance_constrained(&mut self, py: Python<'_>) -> PyResult<String> {
        let started = *self.started.get_or_insert_with(Instant::now);
        let decoder = self.decoder.bind(py).clone();
        let (state, known) = match self.pending.take() {
            Some(state) => {
                let known = self.constrained.as_mut().and_then(|c| c.forced.take());
                (state.into_bound(py), known)
            }
            None => {
                let logits = decoder.call_method1(
                    "prefill_logits",
                    (
                        self.prompt_ids.bind(py),
                        self.plan.bind(py),
                        self.settings.bind(py),
                    ),
                )?;
                self.choose(py, &decoder, &logits)?
            }
        };
        let following = if self.core.wants_more() {
            Some(decoder.call_method1("forward", (&state,))?)
        } else {
            None
        };
        let ids = match known {
            Some(ids) => ids,
            None => Self::read_tokens(py, &state.getattr("tokens")?)?,
        };
        let mut step = self.core.on_tokens(&ids, elapsed_ns(started))?;
        // The budget's last token may be the one that completes the grammar: then the reply
        // ended by itself. A stop token or stop string is never grammar text.
        let out_of_budget =
            step.finished && self.core.stats.stop_reason == Some(StopReason::Length);
        if !step.finished || out_of_budget {
            if let Some(row) = self.constrained.as_mut().and_then(|c| c.masks.row_mut(0)) {
                for &id in ids.iter().filter(|&&id| id >= 0) {
                    row.consume(u32::try_from(id).unwrap_or(u32::MAX))?;
                }
                if row.is_complete() && out_of_budget {
                    self.core.stats.stop_reason = Some(StopReason::Stop);
                } else if row.is_complete() {
                    step.text.push_str(&self.core.end(StopReason::Stop).text);
                    step.finished = true;
                }
            }
        }
        match following {
            Some(logits) if !step.finished => {
                let (next, known) = self.choose(py, &decoder, &logits)?;
                self.pending = Some(next.unbind());
                if let Some(c) = self.constrained.as_mut() {
                    c.forced = known;
                }
            }
            _ => {
                step.text.push_str(&self.core.end(StopReason::Length).text);
                self.done = true;
                self.core.set_total(elapsed_ns(started));
            }
        }
        Ok(step.text)
    }

    /// The next state from `logits` (whose forward pass may still be running): the mask is
    /// computed with the GIL released, then the masked sample is dispatched, or the token is
    /// taken as is when every row allows one only. Returns the state and any forced ids.
    fn choose<'py>(
        &mut self,
        py: Python<'py>,
        decoder: &Bound<'py, PyAny>,
        logits: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyAny>, Option<Vec<i64>>)> {
        let Some(constrained) = self.constrained.as_mut() else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "choose() needs a grammar",
            ));
        };
        let masks = &mut constrained.masks;
        let (allowed, ns) = py.detach(|| masks.fill())?;
        self.core.stats.mask_ns.push(ns);
        let numpy = py.import("numpy")?;
        let forced: Option<Vec<i64>> = allowed
            .iter()
            .map(|a| match a {
                Allowed::Only(t) => Some(i64::from(*t)),
                Allowed::Several => None,
            })
            .collect();
        if let Some(ids) = forced {
            let rows = ids.len();
            let tokens = numpy
                .call_method1("array", (ids.clone(), "int32"))?
                .call_method1("reshape", ((rows, 1),))?;
            return Ok((decoder.call_method1("force", (logits, tokens))?, Some(ids)));
        }
        let words = masks.words();
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mask = numpy
            .call_method1("frombuffer", (PyBytes::new(py, &bytes), "uint32"))?
            .call_method1("reshape", ((masks.rows(), masks.mask_words()),))?;
        Ok((decoder.call_method1("sample", (logits, mask))?, None))
    }
}

// ---- end of structured output ----

fn handler_capsule(
    py: Python<'_>,
    handler: unsafe extern "C" fn(*mut crate::ffi::xla::CallFrame) -> crate::ffi::xla::ErrorPtr,
) -> PyResult<Bound<'_, PyCapsule>> {
    let pointer = std::ptr::NonNull::new(handler as *mut std::ffi::c_void)
        .ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("FFI handler has no address"))?;
    // SAFETY: a function pointer stays valid for the life of the process; the capsule frees nothing.
    unsafe { PyCapsule::new_with_pointer(py, pointer, c"xla._CUSTOM_CALL_TARGET") }
}

/// A GGUF string array for the tokenizer: a list, or the file's packed bytes and the count.
#[derive(FromPyObject)]
enum StringArray {
    Packed(PyBackedBytes, usize),
    List(Vec<String>),
}

impl StringArray {
    fn strings(self) -> PyResult<Vec<String>> {
        match self {
            StringArray::List(list) => Ok(list),
            StringArray::Packed(bytes, count) => crate::gguf_strings::strings(&bytes, count)
                .map_err(|t| {
                    TokenizerError::new_err(format!(
                        "a packed string array ends at byte {} ({} more needed)",
                        t.at, t.needed
                    ))
                }),
        }
    }
}

/// Where each of `count` GGUF strings from `start` in `data` (any byte buffer: the mapped
/// header) begins, as little-endian u64 offsets, and the offset past the last. Raises
/// ValueError(at, needed) when the data ends first.
#[pyfunction]
fn gguf_string_starts<'py>(
    py: Python<'py>,
    data: PyBuffer<u8>,
    start: usize,
    count: usize,
) -> PyResult<(Bound<'py, PyBytes>, usize)> {
    if !data.is_c_contiguous() {
        return Err(PyValueError::new_err("the buffer is not contiguous"));
    }
    // SAFETY: `data` holds the exporter's buffer (an mmap cannot close or resize while
    // exported) for this call, which only reads it.
    let bytes =
        unsafe { std::slice::from_raw_parts(data.buf_ptr() as *const u8, data.len_bytes()) };
    let (starts, end) = crate::gguf_strings::string_starts(bytes, start, count)
        .map_err(|t| PyValueError::new_err((t.at, t.needed)))?;
    let packed: Vec<u8> = starts.iter().flat_map(|s| s.to_le_bytes()).collect();
    Ok((PyBytes::new(py, &packed), end))
}

/// Maps in every page of `data` (a read-only file mapping) ahead of use, with the GIL released,
/// so a thread can load a model while another traces programs: Python's own MAP_POPULATE mmap
/// holds the GIL for the whole pass (0.3 s for a 2.5 GB file). False where the kernel cannot
/// (MADV_POPULATE_READ is Linux 5.14 and later); nothing is read then.
#[pyfunction]
fn populate_pages(py: Python<'_>, data: PyBuffer<u8>) -> bool {
    let (at, len) = (data.buf_ptr() as usize, data.len_bytes());
    // SAFETY: `data` holds the mapping's buffer export for this call (an mmap cannot be closed
    // while exported); madvise only asks the kernel to map the range and reads nothing here.
    py.detach(|| unsafe { populate_range(at, len) })
}

#[cfg(target_os = "linux")]
unsafe fn populate_range(at: usize, len: usize) -> bool {
    if len == 0 {
        return true;
    }
    let page = 4096usize;
    let start = at & !(page - 1);
    unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            len + (at - start),
            libc::MADV_POPULATE_READ,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
unsafe fn populate_range(_at: usize, _len: usize) -> bool {
    false
}

/// The XLA FFI handler of the matvec kernel, as the capsule `jax.ffi.register_ffi_target` takes.
#[pyfunction]
fn matvec_ffi_handler(py: Python<'_>) -> PyResult<Bound<'_, PyCapsule>> {
    handler_capsule(py, crate::ffi::matvec::lljx_matvec)
}

/// The XLA FFI handler of the decode attention kernel, as `jax.ffi.register_ffi_target` takes it.
#[pyfunction]
fn attend_ffi_handler(py: Python<'_>) -> PyResult<Bound<'_, PyCapsule>> {
    handler_capsule(py, crate::ffi::attend::lljx_attend)
}

/// The XLA FFI handler that reads embedding vectors from a head's columns, as `jax.ffi.register_ffi_target` takes it.
#[pyfunction]
fn columns_ffi_handler(py: Python<'_>) -> PyResult<Bound<'_, PyCapsule>> {
    handler_capsule(py, crate::ffi::columns::lljx_columns)
}

/// The XLA FFI handler of RMSNorm by rows, as `jax.ffi.register_ffi_target` takes it.
#[pyfunction]
fn rms_norm_ffi_handler(py: Python<'_>) -> PyResult<Bound<'_, PyCapsule>> {
    handler_capsule(py, crate::ffi::rms_norm::lljx_rms_norm)
}

/// The XLA FFI handler of greedy sampling's argmax, as `jax.ffi.register_ffi_target` takes it.
#[pyfunction]
fn argmax_ffi_handler(py: Python<'_>) -> PyResult<Bound<'_, PyCapsule>> {
    handler_capsule(py, crate::ffi::argmax::lljx_argmax)
}

/// The XLA FFI handler that multiplies activations by GGUF-format weights, as `jax.ffi.register_ffi_target` takes it.
#[pyfunction]
fn block_matmul_ffi_handler(py: Python<'_>) -> PyResult<Bound<'_, PyCapsule>> {
    handler_capsule(py, crate::ffi::block_matmul::lljx_block_matmul)
}

/// The XLA FFI handler that dequantizes rows of a GGUF-format table, as `jax.ffi.register_ffi_target` takes it.
#[pyfunction]
fn block_rows_ffi_handler(py: Python<'_>) -> PyResult<Bound<'_, PyCapsule>> {
    handler_capsule(py, crate::ffi::block_rows::lljx_block_rows)
}

/// The ggml type ids (`gguf.GGMLQuantizationType` values) the block kernels multiply on this CPU;
/// tensors of other types need a fallback.
#[pyfunction]
fn block_kernel_types() -> Vec<i64> {
    crate::kernels::ggml::ALL_TYPES
        .iter()
        .map(|t| t.id())
        .collect()
}

/// Whether this CPU runs the int8 dot-product kernel (AVX-512 VNNI) that tiled int8 weights need;
/// without it those weights would take a slow portable path, so callers keep the plain layout.
#[pyfunction]
fn int8_dot_kernel_available() -> bool {
    crate::kernels::matvec::tiled_kernel_available()
}

/// Read bandwidth in GB/s of `threads` threads streaming an `nbytes` buffer for about `seconds`:
/// the fastest of many short timed units. Returns (GB/s, bytes read per pass, passes per unit).
#[pyfunction]
#[pyo3(signature = (nbytes, threads, *, seconds = 0.5))]
fn read_bandwidth(
    py: Python<'_>,
    nbytes: usize,
    threads: usize,
    seconds: f64,
) -> PyResult<(f64, usize, usize)> {
    let found = py
        .detach(|| crate::kernels::bandwidth::read_bandwidth(nbytes, threads, seconds))
        .map_err(|e| PyValueError::new_err(e.0))?;
    Ok((found.gbs, found.bytes, found.passes))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("TokenizerError", py.get_type::<TokenizerError>())?;
    m.add("TemplateError", py.get_type::<TemplateError>())?;
    m.add("GrammarError", py.get_type::<GrammarError>())?;
    m.add_class::<PyTokenizer>()?;
    m.add_class::<PyStreamDecoder>()?;
    m.add_class::<PyChatTemplate>()?;
    m.add_class::<PyTokenLoop>()?;
    m.add_class::<batch::PyBatchLoop>()?;
    m.add_class::<PyGrammars>()?;
    m.add_class::<PyGrammar>()?;
    m.add_function(wrap_pyfunction!(gguf_string_starts, m)?)?;
    m.add_function(wrap_pyfunction!(populate_pages, m)?)?;
    m.add_function(wrap_pyfunction!(matvec_ffi_handler, m)?)?;
    m.add_function(wrap_pyfunction!(attend_ffi_handler, m)?)?;
    m.add_function(wrap_pyfunction!(int8_dot_kernel_available, m)?)?;
    m.add_function(wrap_pyfunction!(columns_ffi_handler, m)?)?;
    m.add_function(wrap_pyfunction!(argmax_ffi_handler, m)?)?;
    m.add_function(wrap_pyfunction!(rms_norm_ffi_handler, m)?)?;
    m.add_function(wrap_pyfunction!(block_matmul_ffi_handler, m)?)?;
    m.add_function(wrap_pyfunction!(block_rows_ffi_handler, m)?)?;
    m.add_function(wrap_pyfunction!(block_kernel_types, m)?)?;
    m.add_function(wrap_pyfunction!(read_bandwidth, m)?)?;
    Ok(())
}
