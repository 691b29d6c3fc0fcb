use candle_core::{DType, Device};
use concepts_runtime::testing::randn;
use std::time::Instant;

#[test]
fn gemv() {
    let w = randn(&[2816, 1024], 1, DType::F32, &Device::Cpu).unwrap();
    for m in [1usize, 600] {
        let x = randn(&[m, 1024], 2, DType::F32, &Device::Cpu).unwrap();
        let n = if m == 1 { 200 } else { 5 };
        let wt = w.t().unwrap();
        let _ = x.matmul(&wt).unwrap();
        let t = Instant::now();
        for _ in 0..n { let _ = x.matmul(&wt).unwrap(); }
        eprintln!("m={m} x·wT {:?}/call", t.elapsed() / n as u32);
        let xt = x.t().unwrap();
        let t = Instant::now();
        for _ in 0..n { let _ = w.matmul(&xt).unwrap().t().unwrap(); }
        eprintln!("m={m} (w·xT)T {:?}/call", t.elapsed() / n as u32);
        let wtc = wt.contiguous().unwrap();
        let t = Instant::now();
        for _ in 0..n { let _ = x.matmul(&wtc).unwrap(); }
        eprintln!("m={m} x·contig(wT) {:?}/call", t.elapsed() / n as u32);
    }
}
