//! Python bindings, the only module that touches pyo3: thin classes over the core types,
//! the GIL released around real work, core errors mapped to this module's exceptions.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyMapping, PyString, PyTuple};

use crate::chat::{ChatTemplate, Clock, Data};
use crate::detokenize::StreamDecoder;
use crate::error::Error;
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

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        match err {
            Error::Template(_) => TemplateError::new_err(err.to_string()),
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
        tokens: Vec<String>,
        merges: Vec<String>,
        token_types: Vec<i32>,
        bos_id: Option<i64>,
        eos_id: Option<i64>,
        add_bos: bool,
    ) -> PyResult<Self> {
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

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("TokenizerError", py.get_type::<TokenizerError>())?;
    m.add("TemplateError", py.get_type::<TemplateError>())?;
    m.add_class::<PyTokenizer>()?;
    m.add_class::<PyStreamDecoder>()?;
    m.add_class::<PyChatTemplate>()?;
    Ok(())
}
