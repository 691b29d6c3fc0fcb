use candle_core::{DType, Device, Tensor};
use concepts_runtime::testing::{randn, random_model, tiny_config};
use concepts_runtime::{Kernels, KvCache};
use std::time::Instant;

#[test]
fn perf() {
    let mut cfg = tiny_config();
    cfg.text.hidden_size = 1024; cfg.text.intermediate_size = 2816; cfg.text.num_hidden_layers = 6;
    cfg.text.num_attention_heads = 8; cfg.text.num_key_value_heads = 8; cfg.text.head_dim = 128;
    cfg.text.vocab_size = 8000; cfg.text.max_position_embeddings = 1024;
    cfg.vision.hidden_size = 256; cfg.vision.intermediate_size = 1024; cfg.vision.num_hidden_layers = 4;
    cfg.vision.num_attention_heads = 4; cfg.vision.image_size = 336; cfg.vision.patch_size = 14; cfg.vision_feature_layer = 3;
    let (m, _) = random_model(&cfg, 1, DType::F32, &Device::Cpu).unwrap();
    let px = randn(&[1, 3, 336, 336], 1, DType::F32, &Device::Cpu).unwrap();
    let t = Instant::now();
    let f = m.image_features(&px, Kernels::Fast).unwrap();
    eprintln!("vision fast {:?} {:?}", t.elapsed(), f.dims());
    let t = Instant::now();
    let _ = m.image_features(&px, Kernels::Differentiable).unwrap();
    eprintln!("vision diff {:?}", t.elapsed());
    let e = randn(&[1, 600, 1024], 2, DType::F32, &Device::Cpu).unwrap();
    for k in [Kernels::Fast, Kernels::Differentiable] {
        let mut c = KvCache::new(&cfg);
        let t = Instant::now();
        let h = m.forward_embeds(&e, Some(&mut c), k).unwrap();
        let _ = m.base_logits(&h.narrow(1, 599, 1).unwrap()).unwrap();
        eprintln!("{k:?} prefill 600 {:?}", t.elapsed());
        let t = Instant::now();
        for i in 0..20 {
            let x = e.narrow(1, i, 1).unwrap();
            let h = m.forward_embeds(&x, Some(&mut c), k).unwrap();
            let _ = m.base_logits(&h).unwrap();
        }
        eprintln!("{k:?} decode 20 {:?}", t.elapsed());
    }
    let _ = Tensor::zeros(1, DType::F32, &Device::Cpu);
}
