//! Engine micro-benchmarks. Each group has a baseline measured in the same run: serde_json
//! parsing the same payloads into a `Value` and doing nothing else. The figure that matters
//! is weir's throughput divided by the baseline's (criterion prints both in elements/s).
//!
//! Groups: `seed_rule` (one rule over a batch: decode, filter, project, encode; also
//! within a memory budget, as the pipeline runs it),
//! `topic_matching` (1, 1,000 and 10,000 rules), `encoding` (outputs to JSON and Parquet).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use weir_benches::{SEED_RULE, telemetry};
use weir_engine::topic::TopicTrie;
use weir_engine::{Engine, Rule, memory};

/// The allocator weir runs on (src/main.rs): the memory budget is metered by it, and every
/// figure is measured over mimalloc, as weir allocates.
#[global_allocator]
static ALLOCATOR: memory::Counting<mimalloc::MiMalloc> = memory::Counting::new(mimalloc::MiMalloc);

const BATCH: usize = 1024;

fn seed_rule(c: &mut Criterion) {
    let msgs = telemetry(BATCH);
    let bytes: usize = msgs.iter().map(|m| m.payload.len()).sum();
    let rule = Rule::compile(&Engine::new(), SEED_RULE, &[]).expect("the seed rule compiles");
    let mut g = c.benchmark_group("seed_rule");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("baseline_serde_json_parse", |b| {
        b.iter(|| {
            for m in &msgs {
                black_box(serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap());
            }
        })
    });
    g.bench_function("weir_rule_process", |b| {
        b.iter(|| {
            let out = rule.process(black_box(&msgs));
            assert_eq!(out.outputs.len(), BATCH / 2);
            out
        })
    });
    // As the pipeline runs it: inside a memory budget, every allocation counted and every
    // function call metered. Its ratio to `weir_rule_process` is the budget's cost.
    g.bench_function("weir_rule_process_within_memory_budget", |b| {
        b.iter(|| {
            let _scope = memory::Scope::enter(256 << 20);
            let out = rule.process(black_box(&msgs));
            assert_eq!(out.outputs.len(), BATCH / 2);
            out
        })
    });
    g.finish();
    eprintln!(
        "payloads: {BATCH} messages, {} bytes on average",
        bytes / BATCH
    );
}

fn topic_matching(c: &mut Criterion) {
    let mut g = c.benchmark_group("topic_matching");
    g.throughput(Throughput::Elements(1));
    for rules in [1usize, 1_000, 10_000] {
        let mut trie = TopicTrie::new();
        for i in 0..rules {
            trie.insert(&format!("enterprise/facilities/plant-{i}/+"), i);
        }
        g.bench_with_input(BenchmarkId::new("one_match", rules), &trie, |b, trie| {
            let mut n = 0;
            b.iter(|| {
                trie.for_each_match(black_box("enterprise/facilities/plant-0/metrics"), |_| {
                    n += 1
                });
            })
        });
    }
    g.finish();
}

/// Result encoding: the seed rule's outputs as JSON objects (how every action gets them)
/// and as a Parquet file (the object_store action's `format: parquet`, from JSON lines).
fn encoding(c: &mut Criterion) {
    use weir_engine::arrow::json::ReaderBuilder;
    use weir_engine::arrow::json::reader::infer_json_schema_from_seekable;
    // Twenty batches' worth of outputs, as one file would hold them.
    let msgs = telemetry(BATCH * 20);
    let rule = Rule::compile(&Engine::new(), SEED_RULE, &[]).expect("the seed rule compiles");
    let outputs: Vec<bytes::Bytes> = msgs
        .chunks(BATCH)
        .flat_map(|chunk| rule.process(chunk).outputs)
        .map(|o| o.payload)
        .collect();
    let rows = outputs.len();
    let mut lines = Vec::new();
    for o in &outputs {
        lines.extend_from_slice(o);
        lines.push(b'\n');
    }
    let (schema, _) = infer_json_schema_from_seekable(std::io::Cursor::new(&lines), None).unwrap();
    let batch = ReaderBuilder::new(std::sync::Arc::new(schema))
        .with_batch_size(rows)
        .build(std::io::Cursor::new(&lines))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let mut g = c.benchmark_group("encoding");
    g.throughput(Throughput::Elements(rows as u64));
    g.bench_function("baseline_serde_json_parse", |b| {
        b.iter(|| {
            for m in &msgs[..rows] {
                black_box(serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap());
            }
        })
    });
    // 2016-03-23 (the default) writes whole-number Decimals as Ints, looking at every
    // Decimal; 2015-10-08 writes them as arrow-json does: the cost of that look.
    for (name, version) in [
        ("json_objects", weir_engine::SqlVersion::V2016_03_23),
        (
            "json_objects_2015_10_08",
            weir_engine::SqlVersion::V2015_10_08,
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let out = weir_engine::rule::encode_json_rows(black_box(&batch), version).unwrap();
                assert_eq!(out.len(), rows);
                out
            })
        });
    }
    g.bench_function("parquet_file", |b| {
        b.iter(|| weir_connectors::sinks::object_store::to_parquet(black_box(&lines)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, seed_rule, topic_matching, encoding);
criterion_main!(benches);
