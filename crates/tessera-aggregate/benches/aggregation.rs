//! Aggregation throughput: K updates of D floats folded into the exact
//! accumulator, beside a plain copy of the same bytes from the same run.
//!
//! `cargo bench -p tessera-aggregate` prints time per fold; throughput is the
//! bytes of the updates read (K x D x 4) over that time.

use divan::counter::BytesCount;
use divan::{Bencher, black_box};
use tessera_aggregate::{ExactSum, UpdateAccumulator};
use tessera_core::{FitStats, ParameterSet, Tensor, Update};

fn main() {
    divan::main();
}

const SIZES: &[(usize, usize)] = &[(10, 100_000), (100, 100_000), (10, 1_000_000)];

fn updates(k: usize, d: usize) -> Vec<Update> {
    (0..k)
        .map(|i| {
            let values: Vec<f32> = (0..d)
                .map(|j| ((i * 31 + j * 17) % 1000) as f32 * 1e-3 - 0.5)
                .collect();
            let mut delta = ParameterSet::new();
            delta
                .push("w", Tensor::new(vec![d], values).expect("shape"))
                .expect("name");
            Update {
                delta,
                n_examples: 100 + i as u64,
                aux: None,
                stats: FitStats::default(),
            }
        })
        .collect()
}

#[divan::bench(args = SIZES)]
fn exact_accumulator(bencher: Bencher, (k, d): (usize, usize)) {
    let updates = updates(k, d);
    let global = updates[0].delta.zeros_like();
    bencher.counter(BytesCount::new(k * d * 4)).bench(|| {
        let mut acc = UpdateAccumulator::new(&global, None);
        for u in &updates {
            acc.add(u, u.n_examples as f64).expect("in range");
        }
        black_box(acc.finish(k).expect("non-empty"))
    });
}

#[divan::bench(args = SIZES)]
fn exact_accumulator_batch(bencher: Bencher, (k, d): (usize, usize)) {
    // The round's updates folded together (`add_many`): the same bits.
    let updates = updates(k, d);
    let batch: Vec<(&Update, f64)> = updates.iter().map(|u| (u, u.n_examples as f64)).collect();
    let global = updates[0].delta.zeros_like();
    bencher.counter(BytesCount::new(k * d * 4)).bench(|| {
        let mut acc = UpdateAccumulator::new(&global, None);
        let taken = acc.add_many(&batch);
        assert!(taken.iter().all(Result::is_ok));
        black_box(acc.finish(k).expect("non-empty"))
    });
}

#[divan::bench(args = SIZES)]
fn exact_sum_only(bencher: Bencher, (k, d): (usize, usize)) {
    let updates = updates(k, d);
    bencher.counter(BytesCount::new(k * d * 4)).bench(|| {
        let mut sum = ExactSum::new(d);
        for u in &updates {
            sum.add(&u.delta, u.n_examples as f64).expect("in range");
        }
        black_box(sum)
    });
}

#[divan::bench(args = SIZES)]
fn exact_sum_batch(bencher: Bencher, (k, d): (usize, usize)) {
    let updates = updates(k, d);
    let batch: Vec<(&ParameterSet, f64)> = updates
        .iter()
        .map(|u| (&u.delta, u.n_examples as f64))
        .collect();
    bencher.counter(BytesCount::new(k * d * 4)).bench(|| {
        let mut sum = ExactSum::new(d);
        let taken = sum.add_many(&batch);
        assert!(taken.iter().all(Result::is_ok));
        black_box(sum)
    });
}

#[divan::bench(args = SIZES)]
fn float_weighted_sum(bencher: Bencher, (k, d): (usize, usize)) {
    // The order-dependent f32 baseline: sum += w * x.
    let updates = updates(k, d);
    bencher.counter(BytesCount::new(k * d * 4)).bench(|| {
        let mut sum = vec![0.0f32; d];
        for u in &updates {
            let w = u.n_examples as f32;
            for (s, x) in sum.iter_mut().zip(u.delta.tensors()[0].data()) {
                *s += w * x;
            }
        }
        black_box(sum)
    });
}

#[divan::bench(args = SIZES)]
fn memory_copy_threads(bencher: Bencher, (k, d): (usize, usize)) {
    // The same copy split over the machine's cores, as the exact sum is.
    let updates = updates(k, d);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let per = d.div_ceil(threads);
    let mut out = vec![0.0f32; d];
    bencher.counter(BytesCount::new(k * d * 4)).bench_local(|| {
        std::thread::scope(|scope| {
            for (i, part) in out.chunks_mut(per).enumerate() {
                let updates = &updates;
                scope.spawn(move || {
                    for u in updates {
                        part.copy_from_slice(&u.delta.tensors()[0].data()[i * per..][..part.len()]);
                        black_box(&part);
                    }
                });
            }
        });
    });
}

#[divan::bench(args = SIZES)]
fn memory_copy(bencher: Bencher, (k, d): (usize, usize)) {
    let updates = updates(k, d);
    let mut out = vec![0.0f32; d];
    bencher.counter(BytesCount::new(k * d * 4)).bench_local(|| {
        for u in &updates {
            out.copy_from_slice(u.delta.tensors()[0].data());
            black_box(&out);
        }
    });
}
