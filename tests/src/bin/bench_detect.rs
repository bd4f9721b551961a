//! `cargo xtask bench detect`: streaming periodicity scoring, as the agent does it, against a
//! straightforward batch implementation of RITA's beacon score written for this benchmark, on
//! the same synthetic connection log (10M records by default).
//!
//! The log is deterministic (seeded xorshift), time-ordered as a real connection log is, and
//! mixes regular beacons (a period with 10% jitter, one size per pair) with random pairs
//! (uniform start times, that is Poisson given the count, and log-uniform sizes). Records per
//! pair are heavy-tailed (log-uniform weights over three decades), so some pairs have a handful
//! of connections and some thousands. Each pair count given is a separate log.
//!
//! - Batch (RITA over a whole log): group the records by (client, server, port) in a `HashMap`
//!   of `Vec<(start, bytes)>`, then per pair sort, de-duplicate, take the intervals, sort them,
//!   Bowley skewness, MAD (sorted deviations), 24-bin histogram dispersion, coverage, sizes
//!   sorted for their skewness, MAD and mode. The formulas of `periodicity::score`, written
//!   out again here; its scores are checked against `periodicity::score` on the same samples.
//! - Streaming (the agent): every conversation owns a `SampleRing` of
//!   `CONNECTION_SAMPLES` entries, boxed and created on its first connection; the flow table
//!   has already found the conversation, so a record costs the push into a dense per-pair
//!   index. Every pair is scored once at the end of the log, with `SampleRing::score` (the
//!   call the detector makes today) and with `SampleRing::score_with` (same result from reused
//!   buffers, checked equal here), and, as the agent does while the log is live, every
//!   changed pair is scored at each poll.
//!
//! Figures are printed, never asserted: records/s (median [min-max] of the rounds), ns per
//! record, heap memory, the ratio streaming/batch and whether the targets (streaming
//! at least 1.0x batch and 50M records/s) are met. Only disagreement between two computations
//! that must agree stops the run.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::HashMap,
    hint::black_box,
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use clap::Parser;
use fastrand::Rng;
use sensor_agent::{
    detect::periodic_flow::PeriodicFlowConfig,
    flow::table::CONNECTION_SAMPLES,
    scoring::periodicity::{self, Periodicity, SampleRing, ScoreScratch, MIN_SAMPLES},
};
use sensor_tests::parse_count;

/// Heap bytes in use and their peak. Plain loads and stores, not read-modify-writes, to keep
/// the counting out of the timings: this program allocates from one thread only.
struct CountingAlloc;
static HEAP_NOW: AtomicUsize = AtomicUsize::new(0);
static HEAP_PEAK: AtomicUsize = AtomicUsize::new(0);

fn heap_grow(n: usize) {
    let now = HEAP_NOW.load(Relaxed) + n;
    HEAP_NOW.store(now, Relaxed);
    if now > HEAP_PEAK.load(Relaxed) {
        HEAP_PEAK.store(now, Relaxed);
    }
}

fn heap_shrink(n: usize) {
    HEAP_NOW.store(HEAP_NOW.load(Relaxed).saturating_sub(n), Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            heap_grow(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            heap_grow(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        heap_shrink(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                heap_grow(new_size - layout.size());
            } else {
                heap_shrink(layout.size() - new_size);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Starts a peak measurement; returns the bytes in use now.
fn heap_mark() -> usize {
    let now = HEAP_NOW.load(Relaxed);
    HEAP_PEAK.store(now, Relaxed);
    now
}

#[derive(Parser)]
#[command(
    about = "Streaming periodicity scoring (the agent's rings) against a batch RITA beacon score",
    long_about = "Streaming periodicity scoring (the agent's per-conversation rings) against a \
straightforward batch implementation of RITA's beacon score, on the same synthetic, \
time-ordered connection log (beacons and random pairs).\n\n\
Prints, for each pair count: records/s of the batch score and of each streaming variant \
(median [min-max] of the rounds), ns per record, heap memory, the ratio streaming/batch, \
the checks that batch and streaming compute what periodicity::score computes, and whether \
the targets (streaming >= 1.0x batch, >= 50M records/s) are met. Figures only: nothing is \
asserted on time."
)]
struct Args {
    /// Connection records in the log (k = 1,000, M = 1,000,000).
    #[arg(long, default_value = "10M")]
    records: String,
    /// Pair counts (client, server, port) to measure, one log each (comma-separated).
    #[arg(long, default_value = "10k,100k,1M", value_delimiter = ',')]
    pairs: Vec<String>,
    /// Time the log spans.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    span: Duration,
    /// Share of the pairs that beacon (the others are random).
    #[arg(long, default_value_t = 0.1)]
    beacons: f64,
    /// Agent poll interval for the per-poll streaming variant.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// Distinct connection starts a pair needs to be scored (the agent's default).
    #[arg(long, default_value_t = PeriodicFlowConfig::default().min_samples)]
    min_samples: usize,
    /// Rounds of each measurement.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seed of the log generator.
    #[arg(long, default_value_t = 0x5EED_BEAC_0000_0001)]
    seed: u64,
}

type Key = (u32, u32, u16);

/// (client, server, port) of pair `i`, distinct for every pair.
fn key_of(i: u32) -> Key {
    const PORTS: [u16; 8] = [443, 80, 8080, 3333, 53, 8443, 4444, 9999];
    (
        0x0A00_0000 | (i >> 3),
        0xC633_6400 | (i & 7),
        PORTS[(i.wrapping_mul(0x9E37_79B9) >> 29) as usize],
    )
}

/// One connection record of the log: a connection's start and bytes, and its pair both as
/// the 3-tuple the batch groups by and as the dense index the agent's table would give it.
#[derive(Clone, Copy, Debug)]
struct Conn {
    start_ns: u64,
    bytes: u64,
    client: u32,
    server: u32,
    pair: u32,
    port: u16,
}

struct Log {
    conns: Vec<Conn>,
    start_ns: u64,
    span_ns: u64,
    /// Records of each pair.
    per_pair: Vec<u32>,
    beacon_pairs: usize,
}

const S: u64 = 1_000_000_000;

fn generate(records: usize, pairs: usize, span_ns: u64, beacon_share: f64, seed: u64) -> Log {
    let mut rng = Rng::with_seed(seed ^ (pairs as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let start_ns = 1_700_000_000 * S;
    // Heavy-tailed records per pair: log-uniform weights over [1, 1000], scaled to `records`.
    let weights: Vec<f64> = (0..pairs).map(|_| 1000f64.powf(rng.f64())).collect();
    let total: f64 = weights.iter().sum();
    let mut per_pair: Vec<u32> = weights
        .iter()
        .map(|w| (w * records as f64 / total) as u32)
        .collect();
    let short = records - per_pair.iter().map(|&c| c as usize).sum::<usize>();
    for c in per_pair.iter_mut().take(short) {
        *c += 1;
    }
    let mut conns = Vec::with_capacity(records);
    let mut beacon_pairs = 0;
    for (i, &count) in per_pair.iter().enumerate() {
        let (client, server, port) = key_of(i as u32);
        let rec = |start_ns, bytes| Conn {
            start_ns,
            bytes,
            client,
            server,
            pair: i as u32,
            port,
        };
        if rng.f64() < beacon_share {
            beacon_pairs += 1;
            // Period, phase, 10% jitter; one request size per pair.
            let period = span_ns / u64::from(count.max(1));
            let base = start_ns + rng.u64(..(period / 2).max(1));
            let size = 100 + rng.u64(..2000);
            for k in 0..u64::from(count) {
                conns.push(rec(base + k * period + rng.u64(..=period / 10), size));
            }
        } else {
            for _ in 0..count {
                let t = start_ns + rng.u64(..span_ns.max(1));
                conns.push(rec(t, (40.0 * 25_000f64.powf(rng.f64())) as u64));
            }
        }
    }
    conns.sort_unstable_by_key(|c| c.start_ns);
    Log {
        conns,
        start_ns,
        span_ns,
        per_pair,
        beacon_pairs,
    }
}

// ---------------------------------------------------------------------------------------
// Batch: RITA's beacon score over a whole log, written out for the benchmark.

/// Quantile of a sorted sample, linear interpolation between closest ranks (type 7).
fn rita_quantile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let h = (n - 1) as f64 * p;
            let lo = h.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (h - lo as f64)
        }
    }
}

fn clamp01(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

/// (median, MAD, 1 - |Bowley skewness|, clamp(1 - MAD / median)) of a sorted sample.
fn rita_spread(sorted: &[f64]) -> (f64, f64, f64, f64) {
    let q1 = rita_quantile(sorted, 0.25);
    let median = rita_quantile(sorted, 0.5);
    let q3 = rita_quantile(sorted, 0.75);
    // RITA takes B = 0 when Q3 == Q1; the agent, when the IQR is within its noise floor.
    let bowley = if q3 - q1 > 0.0 && q3 - q1 > median.abs() * periodicity::SKEW_NOISE_FLOOR {
        (q3 + q1 - 2.0 * median) / (q3 - q1)
    } else {
        0.0
    };
    let mut dev: Vec<f64> = sorted.iter().map(|x| (x - median).abs()).collect();
    dev.sort_unstable_by(f64::total_cmp);
    let mad = rita_quantile(&dev, 0.5);
    let mad_score = if median > 0.0 {
        clamp01(1.0 - mad / median)
    } else if mad == 0.0 {
        1.0
    } else {
        0.0
    };
    let skew_score = clamp01(
        1.0 - if bowley.is_finite() {
            bowley.abs()
        } else {
            0.0
        },
    );
    (median, mad, skew_score, mad_score)
}

/// RITA's beacon score of one pair's connections `(start, bytes)`.
fn rita_score(conns: &mut [(u64, u64)], window_ns: u64, min_samples: usize) -> Option<Periodicity> {
    let need = min_samples.max(MIN_SAMPLES);
    if conns.len() < need {
        return None;
    }
    conns.sort_unstable();
    let mut times: Vec<u64> = conns.iter().map(|c| c.0).collect();
    times.dedup();
    if times.len() < need {
        return None;
    }
    let (first, last) = (times[0], times[times.len() - 1]);
    let span = last - first;

    let mut intervals: Vec<f64> = times.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
    intervals.sort_unstable_by(f64::total_cmp);
    let (period, jitter, ts_skew_score, ts_mad_score) = rita_spread(&intervals);

    // Start times in min(24, n / 2) equal bins over [first, last]; index of dispersion.
    let bins = (times.len() / 2).clamp(1, 24);
    let mut counts = vec![0u64; bins];
    for &t in &times {
        let i = (u128::from(t - first) * bins as u128 / (u128::from(span) + 1)) as usize;
        counts[i.min(bins - 1)] += 1;
    }
    let mean = times.len() as f64 / bins as f64;
    let var = counts
        .iter()
        .map(|&c| (c as f64 - mean).powi(2))
        .sum::<f64>()
        / bins as f64;
    let ts_hist_score = clamp01(1.0 - var / mean);
    let coverage_score = if window_ns == 0 {
        0.0
    } else {
        clamp01(span as f64 / window_ns as f64)
    };
    let ts_score = clamp01((ts_skew_score + ts_mad_score + ts_hist_score) / 3.0);

    let mut sizes: Vec<u64> = conns.iter().map(|c| c.1).collect();
    sizes.sort_unstable();
    let mut longest = 1;
    let mut run = 1;
    for w in sizes.windows(2) {
        run = if w[0] == w[1] { run + 1 } else { 1 };
        longest = longest.max(run);
    }
    let size_mode_fraction = clamp01(longest as f64 / sizes.len() as f64);
    let sizes: Vec<f64> = sizes.iter().map(|&b| b as f64).collect();
    let (_, _, size_skew_score, size_mad_score) = rita_spread(&sizes);
    let size_score = clamp01((size_skew_score + size_mad_score + size_mode_fraction) / 3.0);

    Some(Periodicity {
        samples: times.len(),
        period_s: period / 1e9,
        jitter_s: jitter / 1e9,
        ts_skew_score,
        ts_mad_score,
        ts_hist_score,
        coverage_score,
        size_skew_score,
        size_mad_score,
        size_mode_fraction,
        ts_score,
        size_score,
        score: clamp01((ts_score + size_score) / 2.0),
    })
}

type Groups = HashMap<Key, Vec<(u64, u64)>>;

/// Groups the whole log by pair, then scores every pair. Returns the groups too, so that
/// freeing them is not timed (nor is freeing the streaming rings).
fn batch(log: &Log, min_samples: usize) -> (Vec<(Key, Periodicity)>, Groups) {
    let mut groups: Groups = HashMap::new();
    for c in &log.conns {
        groups
            .entry((c.client, c.server, c.port))
            .or_default()
            .push((c.start_ns, c.bytes));
    }
    let mut out = Vec::new();
    for (key, conns) in groups.iter_mut() {
        if let Some(p) = rita_score(conns, log.span_ns, min_samples) {
            out.push((*key, p));
        }
    }
    (out, groups)
}

// ---------------------------------------------------------------------------------------
// Streaming: the agent's per-conversation rings.

type Rings = Vec<Option<Box<SampleRing>>>;

fn push_all(log: &Log) -> Rings {
    let mut rings: Rings = (0..log.per_pair.len()).map(|_| None).collect();
    for c in &log.conns {
        rings[c.pair as usize]
            .get_or_insert_with(|| Box::new(SampleRing::new(CONNECTION_SAMPLES)))
            .push(c.start_ns, c.bytes);
    }
    rings
}

/// Scores every pair once, with `SampleRing::score` (`scratch` None) or `score_with`.
fn score_all(
    rings: &Rings,
    window_ns: u64,
    min_samples: usize,
    mut scratch: Option<&mut ScoreScratch>,
) -> Vec<(u32, Periodicity)> {
    let mut out = Vec::new();
    for (i, ring) in rings.iter().enumerate() {
        let Some(ring) = ring else { continue };
        let p = match scratch.as_deref_mut() {
            Some(s) => ring.score_with(s, window_ns, min_samples),
            None => ring.score(window_ns, min_samples),
        };
        if let Some(p) = p {
            out.push((i as u32, p));
        }
    }
    out
}

/// The live agent: pushes in log order and, at every poll, scores each pair that changed
/// since the previous poll (and once more at the end). Returns the rings, the number of
/// scorings and the number of periodic findings (score >= the default `min_score`).
fn polled(log: &Log, poll_ns: u64, min_samples: usize) -> (Rings, u64, u64) {
    let min_score = PeriodicFlowConfig::default().min_score;
    let mut rings: Rings = (0..log.per_pair.len()).map(|_| None).collect();
    let mut dirty = vec![false; log.per_pair.len()];
    let mut changed: Vec<u32> = Vec::new();
    let mut scratch = ScoreScratch::new();
    let (mut scorings, mut findings) = (0u64, 0u64);
    let mut evaluate = |rings: &Rings, changed: &mut Vec<u32>, dirty: &mut [bool], now: u64| {
        for p in changed.drain(..) {
            dirty[p as usize] = false;
            let ring = rings[p as usize]
                .as_deref()
                .expect("a changed pair has a ring");
            scorings += 1;
            if let Some(s) = ring.score_with(&mut scratch, now - log.start_ns, min_samples) {
                findings += u64::from(black_box(s).score >= min_score);
            }
        }
    };
    let mut next_poll = log.start_ns + poll_ns;
    for c in &log.conns {
        if c.start_ns >= next_poll {
            evaluate(&rings, &mut changed, &mut dirty, next_poll);
            next_poll += (c.start_ns - next_poll) / poll_ns * poll_ns + poll_ns;
        }
        rings[c.pair as usize]
            .get_or_insert_with(|| Box::new(SampleRing::new(CONNECTION_SAMPLES)))
            .push(c.start_ns, c.bytes);
        if !dirty[c.pair as usize] {
            dirty[c.pair as usize] = true;
            changed.push(c.pair);
        }
    }
    evaluate(&rings, &mut changed, &mut dirty, next_poll);
    (rings, scorings, findings)
}

// ---------------------------------------------------------------------------------------
// Checks and figures.

/// Largest absolute difference between two scores (every field; `samples` as a number).
fn max_diff(a: &Periodicity, b: &Periodicity) -> f64 {
    [
        (a.samples as f64 - b.samples as f64),
        a.period_s - b.period_s,
        a.jitter_s - b.jitter_s,
        a.ts_skew_score - b.ts_skew_score,
        a.ts_mad_score - b.ts_mad_score,
        a.ts_hist_score - b.ts_hist_score,
        a.coverage_score - b.coverage_score,
        a.size_skew_score - b.size_skew_score,
        a.size_mad_score - b.size_mad_score,
        a.size_mode_fraction - b.size_mode_fraction,
        a.ts_score - b.ts_score,
        a.size_score - b.size_score,
        a.score - b.score,
    ]
    .into_iter()
    .map(f64::abs)
    .fold(0.0, f64::max)
}

/// Rates of the rounds: median [min-max].
struct Rates(Vec<f64>);

impl Rates {
    fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
    fn show(&self) -> String {
        let min = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.0.iter().copied().fold(0.0, f64::max);
        format!(
            "{:>7.2}M [{:.2}M-{:.2}M]",
            self.median() / 1e6,
            min / 1e6,
            max / 1e6
        )
    }
}

fn mib(b: usize) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

fn peak_rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn run(args: &Args, records: usize, pairs: usize, verdicts: &mut Vec<String>) -> Result<()> {
    let t = Instant::now();
    let log = generate(
        records,
        pairs,
        args.span.as_nanos() as u64,
        args.beacons,
        args.seed,
    );
    let gen_s = t.elapsed().as_secs_f64();
    let n = log.conns.len() as f64;
    let over_cap = log
        .per_pair
        .iter()
        .filter(|&&c| c as usize > CONNECTION_SAMPLES)
        .count();
    let min = args.min_samples;
    let poll_ns = args.poll.as_nanos() as u64;
    println!(
        "\n{} records over {}, {} pairs ({} beacons, the rest random; {} pairs with more than {} records, of which streaming keeps the last {}), generated in {:.1} s",
        log.conns.len(),
        humantime::format_duration(args.span),
        pairs,
        log.beacon_pairs,
        over_cap,
        CONNECTION_SAMPLES,
        CONNECTION_SAMPLES,
        gen_s
    );

    let (mut b_rate, mut agent_rate, mut fast_rate, mut push_rate, mut polled_rate) = (
        Rates(vec![]),
        Rates(vec![]),
        Rates(vec![]),
        Rates(vec![]),
        Rates(vec![]),
    );
    let (mut score_ns, mut score_share) = (Vec::new(), Vec::new());
    let (mut b_peak, mut ring_bytes, mut s_peak, mut p_peak) = (0, 0, 0, 0);
    let (mut scorings, mut findings) = (0, 0);
    let mut batch_out = Vec::new();
    let mut agent_out = Vec::new();
    let mut fast_out = Vec::new();
    let mut groups = Groups::new();
    let mut scratch = ScoreScratch::new();
    for round in 0..args.rounds {
        // Batch.
        drop(std::mem::take(&mut groups));
        drop(std::mem::take(&mut batch_out));
        let base = heap_mark();
        let t = Instant::now();
        let (out, g) = batch(&log, min);
        b_rate.0.push(n / t.elapsed().as_secs_f64());
        b_peak = b_peak.max(HEAP_PEAK.load(Relaxed) - base);
        (batch_out, groups) = (black_box(out), g);

        // Streaming, agent path: push, then SampleRing::score.
        drop(std::mem::take(&mut agent_out));
        let t = Instant::now();
        let rings = push_all(&log);
        let out = score_all(&rings, log.span_ns, min, None);
        agent_rate.0.push(n / t.elapsed().as_secs_f64());
        agent_out = black_box(out);
        drop(rings);

        // Streaming, scratch path; push and scoring also timed apart.
        drop(std::mem::take(&mut fast_out));
        let base = heap_mark();
        let t = Instant::now();
        let rings = push_all(&log);
        let pushed = t.elapsed();
        ring_bytes = HEAP_NOW.load(Relaxed) - base;
        let out = score_all(&rings, log.span_ns, min, Some(&mut scratch));
        let all = t.elapsed();
        fast_rate.0.push(n / all.as_secs_f64());
        push_rate.0.push(n / pushed.as_secs_f64());
        score_ns.push((all - pushed).as_nanos() as f64 / rings.iter().flatten().count() as f64);
        score_share.push((all - pushed).as_nanos() as f64 / n);
        s_peak = s_peak.max(HEAP_PEAK.load(Relaxed) - base);
        fast_out = black_box(out);
        if round + 1 == args.rounds {
            // Both paths must give the same result, bit for bit.
            if format!("{agent_out:?}") != format!("{fast_out:?}") {
                bail!("SampleRing::score_with differs from SampleRing::score");
            }
        }
        drop(rings);

        // Streaming, scored at every poll: one round, it is the slowest by far.
        if round > 0 {
            continue;
        }
        let base = heap_mark();
        let t = Instant::now();
        let (rings, s, f) = polled(&log, poll_ns, min);
        polled_rate.0.push(n / t.elapsed().as_secs_f64());
        p_peak = p_peak.max(HEAP_PEAK.load(Relaxed) - base);
        (scorings, findings) = (s, f);
        drop(rings);
    }

    // Checks (not timed).
    // 1. The batch implementation computes what periodicity::score computes.
    let (mut diff_ref, mut presence_ref, mut checked, mut shown) = (0.0f64, 0usize, 0usize, 0);
    let batch_by_key: HashMap<Key, &Periodicity> = batch_out.iter().map(|(k, p)| (*k, p)).collect();
    for (key, conns) in &groups {
        let times: Vec<u64> = conns.iter().map(|c| c.0).collect();
        let sizes: Vec<u64> = conns.iter().map(|c| c.1).collect();
        let want = periodicity::score(&times, &sizes, log.span_ns, min);
        match (batch_by_key.get(key), want) {
            (Some(got), Some(want)) => {
                let d = max_diff(got, &want);
                if d > 1e-9 && shown < 3 {
                    shown += 1;
                    eprintln!("pair {key:?}: {conns:?}\n  batch {got:?}\n  score {want:?}");
                }
                diff_ref = diff_ref.max(d);
                checked += 1;
            }
            (None, None) => {}
            _ => presence_ref += 1,
        }
    }
    // 2. Streaming against batch, on the pairs whose every record fits in the ring.
    let (mut diff_sb, mut presence_sb, mut compared) = (0.0f64, 0usize, 0usize);
    let stream_by_pair: HashMap<u32, &Periodicity> =
        fast_out.iter().map(|(i, p)| (*i, p)).collect();
    for (i, &count) in log.per_pair.iter().enumerate() {
        if count as usize > CONNECTION_SAMPLES {
            continue;
        }
        match (
            stream_by_pair.get(&(i as u32)),
            batch_by_key.get(&key_of(i as u32)),
        ) {
            (Some(s), Some(b)) => {
                diff_sb = diff_sb.max(max_diff(s, b));
                compared += 1;
            }
            (None, None) => {}
            _ => presence_sb += 1,
        }
    }
    if presence_ref > 0 || presence_sb > 0 || diff_ref > 1e-9 || diff_sb > 1e-9 {
        bail!("scores disagree: batch vs periodicity::score max |diff| {diff_ref:e}, {presence_ref} scored by one only; streaming vs batch max |diff| {diff_sb:e}, {presence_sb} scored by one only");
    }
    let fires = |v: &[(u32, Periodicity)]| {
        let m = PeriodicFlowConfig::default().min_score;
        v.iter().filter(|(_, p)| p.score >= m).count()
    };

    let row = |name: &str, r: &Rates, mem: String| {
        println!(
            "  {name:<50} {:<27} {:>8.1}   {mem}",
            r.show(),
            1e9 / r.median()
        );
    };
    println!(
        "  {:<50} {:<27} {:>8}   memory (heap)",
        "method", "records/s median [min-max]", "ns/rec"
    );
    row(
        "batch: RITA beacon score of the whole log",
        &b_rate,
        format!("peak {} ({:.0} B/record)", mib(b_peak), b_peak as f64 / n),
    );
    row(
        "streaming: push + SampleRing::score (agent today)",
        &agent_rate,
        String::new(),
    );
    row(
        "streaming: push + SampleRing::score_with",
        &fast_rate,
        format!(
            "peak {}; rings {} ({:.0} B/pair)",
            mib(s_peak),
            mib(ring_bytes),
            ring_bytes as f64 / pairs as f64
        ),
    );
    row("  of which ring push alone", &push_rate, String::new());
    let mid = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "  {:<50} {:<27} {:>8.1}   {:.0} ns per pair, {:.1} records per pair",
        "  of which score_with of every pair",
        "",
        mid(&mut score_share),
        mid(&mut score_ns),
        n / log.per_pair.iter().filter(|&&c| c > 0).count() as f64
    );
    row(
        &format!(
            "streaming: score_with every {} poll, 1 round",
            humantime::format_duration(args.poll)
        ),
        &polled_rate,
        format!(
            "peak {}; {scorings} scorings ({:.2} per record)",
            mib(p_peak),
            scorings as f64 / n
        ),
    );
    let (b, a, f, p) = (
        b_rate.median(),
        agent_rate.median(),
        fast_rate.median(),
        polled_rate.median(),
    );
    println!(
        "  ratio streaming/batch: {:.2}x (agent's SampleRing::score), {:.2}x (score_with), {:.2}x (score_with at every poll)",
        a / b,
        f / b,
        p / b
    );
    println!(
        "  checks: batch vs periodicity::score on the same samples: max |diff| {diff_ref:e} over {checked} pairs, same pairs scored; \
score_with == SampleRing::score bit for bit on {} pairs; streaming vs batch on the {} pairs scored with <= {} records: max |diff| {diff_sb:e}; \
findings (score >= {}): batch {}, streaming {} (at the end), {} at polls",
        fast_out.len(),
        compared,
        CONNECTION_SAMPLES,
        PeriodicFlowConfig::default().min_score,
        batch_out
            .iter()
            .filter(|(_, p)| p.score >= PeriodicFlowConfig::default().min_score)
            .count(),
        fires(&fast_out),
        findings
    );
    for (name, r) in [
        ("agent's SampleRing::score", a),
        ("score_with", f),
        ("score_with at every poll", p),
    ] {
        verdicts.push(format!(
            "{records} records, {pairs} pairs, streaming with {name}: {:.1}M records/s (>= 50M: {}), {:.2}x batch (>= 1.0x: {})",
            r / 1e6,
            mark(r >= 50e6),
            r / b,
            mark(r >= b)
        ));
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let records = parse_count(&args.records)?;
    if records == 0 || args.rounds == 0 || args.poll.is_zero() || args.span.as_nanos() < 1000 {
        bail!("--records, --rounds, --poll and --span must be positive");
    }
    println!(
        "periodicity scoring, streaming (ring of {} per conversation) vs batch (RITA), min {} distinct starts, {} rounds, one core",
        CONNECTION_SAMPLES, args.min_samples, args.rounds
    );
    let mut verdicts = Vec::new();
    for spec in &args.pairs {
        let pairs = parse_count(spec)?;
        if pairs == 0 || pairs > u32::MAX as usize {
            bail!("pair count {spec:?} out of range");
        }
        run(&args, records, pairs, &mut verdicts)?;
    }
    println!("\nrecords/s = log records / wall time (Instant) of the whole method: grouping or ring pushes plus scoring every pair; freeing the state is not timed. Memory: heap bytes from a counting allocator, peak above the log. Process peak RSS: {}.", peak_rss());
    for v in verdicts {
        println!("{v}");
    }
    Ok(())
}
