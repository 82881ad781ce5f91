//! Median time of an activation-only change in a Session (alternating two configs).
use qscope::pipeline::{Cancel, Session};
use qscope::{QuantConfig, Strategy, bundled};
fn main() {
    qscope::process::keep_freed_memory();
    let name = std::env::args().nth(1).unwrap();
    let mut s = Session::new(
        bundled::model(&name).unwrap(),
        bundled::calib(),
        bundled::test(),
    );
    let cs = [
        QuantConfig {
            act_strategy: Strategy::Kl,
            ..Default::default()
        },
        QuantConfig {
            act_bits: 4,
            ..Default::default()
        },
    ];
    s.run(&cs[0], &Cancel::new()).unwrap();
    let mut t: Vec<f64> = (1..12)
        .map(|i| {
            let a = std::time::Instant::now();
            s.run(&cs[i % 2], &Cancel::new()).unwrap();
            a.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("{name} median {:.1} ms", t[t.len() / 2]);
}
