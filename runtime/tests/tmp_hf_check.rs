use candle_core::{DType, Device, Tensor};
use concepts_runtime::{Kernels, KvCache, LlavaModel};

fn maxdiff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

fn check(dir: &str, dtype: DType) {
    let dev = Device::Cpu;
    let m = LlavaModel::load(std::path::Path::new(dir), &dev, dtype).unwrap();
    let refs = candle_core::safetensors::load(format!("{dir}/ref.safetensors"), &dev).unwrap();
    let r = |n: &str| refs[n].to_dtype(dtype).unwrap();
    let pix = r("pixels");
    for k in [Kernels::Fast, Kernels::Differentiable] {
        let hs = m.vision_hidden_states(&pix, k).unwrap();
        for (i, h) in hs.iter().enumerate() {
            eprintln!("{dir} {k:?} vision_hidden.{i}: {:e}", maxdiff(&h.to_dtype(DType::F64).unwrap(), &refs[&format!("vision_hidden.{i}")]));
        }
        let f = m.image_features(&pix, k).unwrap();
        eprintln!("{dir} {k:?} features: {:e}", maxdiff(&f.to_dtype(DType::F64).unwrap(), &refs["features"]));
        let ids = refs["ids"].to_dtype(DType::U32).unwrap();
        let idv = ids.to_vec1::<u32>().unwrap();
        let e = m.embed_tokens(&ids).unwrap();
        let h = m.forward_embeds(&e.unsqueeze(0).unwrap(), None, k).unwrap().squeeze(0).unwrap();
        eprintln!("{dir} {k:?} text hidden: {:e}", maxdiff(&h.to_dtype(DType::F64).unwrap(), &refs["last_hidden_text"]));
        // splice image 0
        let f0 = f.get(0).unwrap();
        let mut rows = vec![]; let mut j = 0;
        for (t, &id) in idv.iter().enumerate() {
            if id == 39 { rows.push(f0.get(j).unwrap()); j += 1 } else { rows.push(e.get(t).unwrap()) }
        }
        let emb = Tensor::stack(&rows, 0).unwrap().unsqueeze(0).unwrap();
        let h = m.forward_embeds(&emb, None, k).unwrap();
        let lg = m.base_logits(&h).unwrap().squeeze(0).unwrap();
        eprintln!("{dir} {k:?} logits: {:e}", maxdiff(&lg.to_dtype(DType::F64).unwrap(), &refs["logits"]));
        // incremental
        let mut cache = KvCache::new(m.config());
        let h1 = m.forward_embeds(&emb.narrow(1, 0, 6).unwrap(), Some(&mut cache), k).unwrap();
        let mut parts = vec![h1];
        for t in 6..10 { parts.push(m.forward_embeds(&emb.narrow(1, t, 1).unwrap(), Some(&mut cache), k).unwrap()); }
        let hc = Tensor::cat(&parts, 1).unwrap();
        let lgc = m.base_logits(&hc).unwrap().squeeze(0).unwrap();
        eprintln!("{dir} {k:?} logits cached: {:e}", maxdiff(&lgc.to_dtype(DType::F64).unwrap(), &refs["logits"]));
    }
    let p = m.pooled_image_embedding(&pix).unwrap();
    eprintln!("{dir} pooled: {:e}", maxdiff(&p.to_dtype(DType::F64).unwrap(), &refs["pooled"]));
}

#[test]
fn hf() {
    for d in ["/tmp/hfcheck/mha", "/tmp/hfcheck/gqa"] {
        check(d, DType::F64);
        check(d, DType::F32);
    }
}
