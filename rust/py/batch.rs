//! `BatchLoop`: one loop drives every slot of a batched decoder (`lljx.strategies.slots.SlotDecoder`).
//!
//! Each `step()` plans with the scheduler (`crate::batch`), dispatches the step on the device,
//! then reads back the step before it (waiting with the GIL released) and routes its tokens to
//! their requests; a split step (some row has a grammar) reads first, computes the masks and
//! then dispatches the sample. Python sees events: text per request, and each one's end.

use std::time::Instant;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyString, PyTuple};

use super::{stats_dict, PyGrammar, PyTokenizer};
use crate::batch::{
    Batch, ChunkPolicy, End, Event, InFlight, Program, Programs, Request, Rows, Sampling, Shape,
    StepPlan,
};
use crate::constrain::RowConstraint;

/// Asks the decoder whether programs are compiled (`ready`, which starts a missing one
/// compiling), or compiles them now (`prepare`) when waiting is harmless.
struct DecoderPrograms<'a, 'py> {
    decoder: &'a Bound<'py, PyAny>,
    error: Option<PyErr>,
}

fn program_args(program: Program) -> (&'static str, Vec<usize>) {
    match program {
        Program::Decode(s) => ("decode", vec![s.batch, s.cache_len]),
        Program::Forward(s) => ("forward", vec![s.batch, s.cache_len]),
        Program::Sample(b) => ("sample", vec![b]),
        Program::Insert(s, p) => ("insert", vec![s.batch, s.cache_len, p]),
        Program::InsertLogits(s, p) => ("insert_logits", vec![s.batch, s.cache_len, p]),
        Program::Prefill(p, c) => ("prefill", vec![p, c]),
        Program::Resize(a, b) => ("resize", vec![a.batch, a.cache_len, b.batch, b.cache_len]),
        Program::Rebucket(from, to) => ("rebucket", vec![from, to]),
        Program::Extract(s) => ("extract", vec![s.batch, s.cache_len]),
    }
}

impl<'py> DecoderPrograms<'_, 'py> {
    /// The decoder's yes or no to `method` for a program; a failure is kept for the step to
    /// raise, and every later answer is no.
    fn answer(&mut self, method: &str, program: Program) -> bool {
        if self.error.is_some() {
            return false;
        }
        let answer = self
            .call(method, program)
            .and_then(|answer| answer.extract::<bool>());
        answer.unwrap_or_else(|error| {
            self.error = Some(error);
            false
        })
    }

    /// The decoder's `method` called with the program's kind and shape.
    fn call(&self, method: &str, program: Program) -> PyResult<Bound<'py, PyAny>> {
        let (kind, shape) = program_args(program);
        let py = self.decoder.py();
        let mut items = vec![PyString::new(py, kind).into_any()];
        items.extend(shape.into_iter().map(|n| PyInt::new(py, n).into_any()));
        self.decoder.call_method1(method, PyTuple::new(py, items)?)
    }
}

impl Programs for DecoderPrograms<'_, '_> {
    /// Never blocks, even when the batch is idle (`_wait`): a compile runs on its background
    /// thread while this thread keeps taking cancels and new requests, and the engine polls
    /// until the program is in (a 4096-position prompt's programs take seconds to compile).
    fn ready(&mut self, program: Program, _wait: bool) -> bool {
        self.answer("ready", program)
    }

    /// Whether a program is compiled (`SlotDecoder.compiled`), starting nothing.
    fn compiled(&mut self, program: Program) -> bool {
        self.answer("compiled", program)
    }

    /// A program asked for ahead (`SlotDecoder.ask`): compiled behind those a step waits for.
    fn ask(&mut self, program: Program) {
        if self.error.is_some() {
            return;
        }
        if let Err(error) = self.call("ask", program) {
            self.error = Some(error);
        }
    }
}

/// The loop over all slots; iterate it by calling `step()` while `live` is non-zero.
#[pyclass(module = "lljx._native", name = "BatchLoop", unsendable)]
pub struct PyBatchLoop {
    decoder: Py<PyAny>,
    core: Batch,
    mask_words: usize,
    /// The latest dispatched device state (a `SlotState`).
    state: Option<Py<PyAny>>,
    /// The tokens of the last dispatched step and what they hold, read on the next `step()`.
    pending: Option<(Py<PyAny>, InFlight)>,
    /// The output of the last step that reads nothing back (prompt chunks only): the step after
    /// it waits for it once dispatched, so a prompt runs at most one step ahead of the device
    /// and a cancelled one stops within a chunk.
    unread: Option<Py<PyAny>>,
    clock: Instant,
    /// When the previous step was read, if the step after it was queued on the device already.
    last_read_ns: Option<u64>,
    /// Prompt positions (and their largest bucket) dispatched behind the last step read: the
    /// device runs them before the next step's decode, so they land in the next read's gap.
    carried: (usize, usize),
    /// Whether the last `step()` dispatched or read anything.
    progressed: bool,
}

impl PyBatchLoop {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Reads the pending step's tokens (waiting on the device with the GIL released, as jaxlib
    /// does) and routes them. The gap since the previous read is what the chunk policy learns
    /// from: it holds this step's decode and the prompt chunks queued behind the step before
    /// (plus this step's own, when one ends a prompt: the tokens then come after them).
    fn read_pending(&mut self, py: Python<'_>) -> PyResult<Vec<Event>> {
        let Some((tokens, flight)) = self.pending.take() else {
            self.last_read_ns = None;
            self.carried = (0, 0);
            return Ok(Vec::new());
        };
        let tokens = tokens.into_bound(py);
        tokens.call_method0("block_until_ready")?;
        let values: Vec<Vec<i64>> = py
            .import("numpy")?
            .call_method1("asarray", (&tokens,))?
            .call_method0("tolist")?
            .extract()?;
        let now = self.now_ns();
        let own = (flight.chunk_tokens, flight.chunk_bucket);
        let (landed, carried) = if flight.inserted {
            ((self.carried.0 + own.0, self.carried.1.max(own.1)), (0, 0))
        } else {
            (self.carried, own)
        };
        self.carried = carried;
        if let Some(before) = self.last_read_ns.filter(|_| !flight.resized) {
            self.core.policy.observe(
                flight.batch,
                flight.decoded,
                landed.0,
                landed.1,
                now.saturating_sub(before),
            );
        }
        self.last_read_ns = Some(now);
        Ok(self.core.route(&flight, &values, now))
    }

    fn dispatch<'py>(&mut self, py: Python<'py>, plan: &StepPlan) -> PyResult<Bound<'py, PyAny>> {
        let decoder = self.decoder.bind(py);
        // A prompt may be part prefilled (in the state's scratch) before its batch exists or
        // is made afresh: the scratch carries over.
        let mut previous = self.state.take().map(|s| s.into_bound(py));
        for &(row, into) in &plan.extract {
            // Finished replies' rows become scratches first: a fresh batch replaces the cache.
            let state = previous
                .ok_or_else(|| PyRuntimeError::new_err("a row to copy out without a batch"))?;
            previous = Some(decoder.call_method1("extract", (state, row, into))?);
        }
        let state = match (plan.reset, previous) {
            (Some(shape), previous) => {
                decoder.call_method1("empty", (shape.batch, shape.cache_len, previous))?
            }
            (None, Some(state)) => state,
            (None, None) => decoder.call_method1("idle", (py.None(),))?,
        };
        let resize = plan
            .resize
            .as_ref()
            .map(|(source, shape)| (source.clone(), shape.cache_len));
        let rows = plan.rows.as_ref().map(|r| rows_dict(py, r)).transpose()?;
        let chunks = PyList::empty(py);
        for chunk in &plan.chunks {
            let insert = match chunk.insert {
                Some((slot, sampling)) => Some((slot, sampling_dict(py, &[sampling], &[0])?)),
                None => None,
            };
            chunks.append((
                chunk.ids.clone(),
                chunk.start,
                chunk.bucket,
                chunk.size,
                insert,
                chunk.rebucket,
                chunk.swap,
                chunk.copy,
            ))?;
        }
        decoder.call_method1("step", (state, resize, rows, chunks, plan.masked))
    }

    /// The split step's second half: masks for every row, then the sample.
    fn sample<'py>(
        &mut self,
        py: Python<'py>,
        state: Bound<'py, PyAny>,
        flight: &InFlight,
        events: &mut Vec<Event>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let rows = self
            .core
            .sample_rows(flight)
            .ok_or_else(|| PyRuntimeError::new_err("a split step without a batch"))?;
        let (words, failed) = self.core.masks(self.mask_words);
        events.extend(failed);
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mask = py
            .import("numpy")?
            .call_method1("frombuffer", (PyBytes::new(py, &bytes), "uint32"))?
            .call_method1("reshape", ((rows.positions.len(), self.mask_words),))?;
        self.decoder
            .bind(py)
            .call_method1("sample", (state, rows_dict(py, &rows)?, mask))
    }
}

fn sampling_dict<'py>(
    py: Python<'py>,
    rows: &[Sampling],
    counters: &[i32],
) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item(
        "keys",
        rows.iter().map(|s| s.key.to_vec()).collect::<Vec<_>>(),
    )?;
    out.set_item("counters", counters.to_vec())?;
    out.set_item(
        "temperature",
        rows.iter().map(|s| s.temperature).collect::<Vec<_>>(),
    )?;
    out.set_item("top_k", rows.iter().map(|s| s.top_k).collect::<Vec<_>>())?;
    out.set_item("top_p", rows.iter().map(|s| s.top_p).collect::<Vec<_>>())?;
    out.set_item("min_p", rows.iter().map(|s| s.min_p).collect::<Vec<_>>())?;
    Ok(out)
}

fn rows_dict<'py>(py: Python<'py>, rows: &Rows) -> PyResult<Bound<'py, PyDict>> {
    let out = sampling_dict(py, &rows.sampling, &rows.counters)?;
    out.set_item("positions", rows.positions.clone())?;
    out.set_item("active", rows.active.clone())?;
    Ok(out)
}

/// (id, text, end, detail): end is "" while running, "done" (detail: stats with `token_ids`
/// and `queue_ns`), "failed" (detail: the message) or "cancelled".
fn event_tuple<'py>(py: Python<'py>, event: Event) -> PyResult<Bound<'py, PyTuple>> {
    let (end, detail): (&str, Bound<'py, PyAny>) = match event.end {
        None => ("", py.None().into_bound(py)),
        Some(End::Done(finished)) => {
            let stats = stats_dict(py, &finished.stats)?;
            stats.set_item("token_ids", finished.token_ids)?;
            stats.set_item("queue_ns", finished.queue_ns)?;
            stats.set_item("prompt_cached", finished.prompt_cached)?;
            ("done", stats.into_any())
        }
        Some(End::Failed(message)) => ("failed", message.into_pyobject(py)?.into_any()),
        Some(End::Cancelled) => ("cancelled", py.None().into_bound(py)),
    };
    (event.id, event.text, end, detail).into_pyobject(py)
}

#[pymethods]
impl PyBatchLoop {
    /// `slots` requests run at once; `mask_words` is a row's packed token mask width; a step
    /// that prefills while rows decode aims to take at most `step_target_ms`; with nothing
    /// decoding, a step prefills up to `idle_chunk` prompt positions. With `reuse_prompts`, a
    /// prompt starts after what it shares with the last one prefilled, or with one of
    /// `kept_scratches` earlier prompts and finished replies kept beside it (the scratch caches
    /// are kept while idle): only for a decoder whose rows' numbers do not depend on their
    /// chunking. Prompts arriving within `gather_ms` of replies that ended wait for as many
    /// as ended, to be read in one pass (0: never).
    #[new]
    #[pyo3(signature = (decoder, tokenizer, *, slots, mask_words, step_target_ms=120, idle_chunk=256, reuse_prompts=false, kept_scratches=0, gather_ms=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        decoder: Py<PyAny>,
        tokenizer: &PyTokenizer,
        slots: usize,
        mask_words: usize,
        step_target_ms: u64,
        idle_chunk: usize,
        reuse_prompts: bool,
        kept_scratches: usize,
        gather_ms: u64,
    ) -> PyResult<Self> {
        let width: usize = decoder.bind(py).getattr("width")?.extract()?;
        let mut sizes: Vec<usize> = decoder.bind(py).getattr("chunk_sizes")?.extract()?;
        sizes.sort_unstable();
        if sizes.is_empty() || sizes.iter().any(|s| !s.is_power_of_two()) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "chunk sizes must be powers of two",
            ));
        }
        let policy = ChunkPolicy::new(step_target_ms.saturating_mul(1_000_000), idle_chunk);
        let mut core = Batch::new(tokenizer.inner.clone(), slots, width, sizes, policy);
        core.reuse_prompts = reuse_prompts;
        core.keep_scratches(if reuse_prompts { kept_scratches } else { 0 });
        core.gather_ns = gather_ms.saturating_mul(1_000_000);
        Ok(PyBatchLoop {
            decoder,
            core,
            mask_words,
            state: None,
            pending: None,
            unread: None,
            clock: Instant::now(),
            last_read_ns: None,
            carried: (0, 0),
            progressed: false,
        })
    }

    /// Queues a request; `key` is its sampler's raw key data (two u32), temperature 0 is greedy.
    #[pyo3(signature = (id, prompt_ids, *, max_tokens, stop_ids, stop_strings, key, temperature, top_k, top_p, min_p, grammar=None))]
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &mut self,
        id: u64,
        prompt_ids: Vec<u32>,
        max_tokens: usize,
        stop_ids: Vec<u32>,
        stop_strings: Vec<String>,
        key: (u32, u32),
        temperature: f32,
        top_k: i32,
        top_p: f32,
        min_p: f32,
        grammar: Option<PyRef<'_, PyGrammar>>,
    ) -> PyResult<()> {
        if prompt_ids.is_empty() || max_tokens == 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "a request needs a prompt and a budget",
            ));
        }
        let sampling = Sampling {
            key: [key.0, key.1],
            temperature,
            top_k,
            top_p,
            min_p,
        };
        let request = Request {
            id,
            prompt: prompt_ids,
            budget: max_tokens,
            stop_ids,
            stop_strings,
            sampling,
            grammar: grammar.map(|g| RowConstraint::new(&g.inner)),
        };
        let now = self.now_ns();
        self.core.submit(request, now);
        Ok(())
    }

    /// Ends a request now (its slot is free for the next step): the tokens it had generated,
    /// or None when it is not here.
    fn cancel(&mut self, id: u64) -> Option<usize> {
        self.core.cancel(id)
    }

    /// One step: plan, dispatch, read the step before. Returns the events it produced.
    fn step<'py>(&mut self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let decoder = self.decoder.bind(py).clone();
        let mut programs = DecoderPrograms {
            decoder: &decoder,
            error: None,
        };
        let now = self.now_ns();
        let plan = self.core.plan(&mut programs, now);
        if let Some(error) = programs.error {
            return Err(error);
        }
        let work = !plan.is_empty() || plan.resize.is_some() || plan.reset.is_some();
        self.progressed = work || self.pending.is_some();
        let mut events = Vec::new();
        if work {
            let state = self.dispatch(py, &plan)?;
            let flight = self.core.commit(&plan);
            events.extend(self.read_pending(py)?);
            if let Some(previous) = self.unread.take() {
                previous.bind(py).call_method0("block_until_ready")?;
            }
            let state = if plan.masked && !flight.reads.is_empty() {
                self.sample(py, state, &flight, &mut events)?
            } else {
                state
            };
            if !flight.reads.is_empty() {
                self.pending = Some((state.getattr("tokens")?.unbind(), flight));
            } else {
                let chunk = state.getattr("chunk_logits")?;
                self.unread = (!chunk.is_none()).then(|| chunk.unbind());
            }
            self.state = Some(state.unbind());
        } else {
            self.core.commit(&plan);
            events.extend(self.read_pending(py)?);
        }
        if plan.shape.is_none() {
            // No batch: its rows' memory goes; the scratch stays while a prompt is being
            // prefilled into it, or for the next prompt to start from.
            let keep = self.core.live() > 0 || self.core.reuse_prompts;
            self.state = match self.state.take() {
                Some(state) if keep => Some(
                    self.decoder
                        .bind(py)
                        .call_method1("idle", (state,))?
                        .unbind(),
                ),
                _ => None,
            };
            if self.state.is_none() {
                self.core.forget_scratch();
            }
        }
        events.into_iter().map(|e| event_tuple(py, e)).collect()
    }

    /// Ends every request with `message` (after a failed step: the device state is gone).
    fn fail_all<'py>(
        &mut self,
        py: Python<'py>,
        message: &str,
    ) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        self.state = None;
        self.pending = None;
        self.unread = None;
        self.last_read_ns = None;
        self.carried = (0, 0);
        self.core
            .fail_all(message)
            .into_iter()
            .map(|e| event_tuple(py, e))
            .collect()
    }

    /// Positions the batch's cache holds for a request that may fill `need` (the bucket its
    /// programs compile for).
    #[staticmethod]
    fn cache_bucket(need: usize) -> usize {
        crate::batch::plan::cache_bucket(need)
    }

    /// Whether the last `step()` dispatched or read anything (if not, it waited on a compile).
    #[getter]
    fn progressed(&self) -> bool {
        self.progressed
    }

    /// Requests submitted and not ended.
    #[getter]
    fn live(&self) -> usize {
        self.core.live()
    }

    /// Requests holding a slot (prefilling or decoding); the rest wait.
    #[getter]
    fn in_slots(&self) -> usize {
        self.core.in_slots()
    }

    /// The device batch as (rows, cache length), or None.
    #[getter]
    fn shape(&self) -> Option<(usize, usize)> {
        self.core
            .shape()
            .map(|Shape { batch, cache_len }| (batch, cache_len))
    }
}
