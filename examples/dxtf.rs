use decodex::decode::Decoder;
use decodex::models::llama::Llama;
fn main() {
    let path = std::path::PathBuf::from(std::env::var("HOME").unwrap())
        .join(".cache/decodex/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let m = Llama::from_gguf(&path, false, &candle_core::Device::Cpu).unwrap();
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/smollm2_generate.json").unwrap(),
    )
    .unwrap();
    let cpp: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/smollm2_llamacpp.json").unwrap(),
    )
    .unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    std::fs::create_dir_all("/tmp/lldump/dx_tf").unwrap();
    for (i, (c, w)) in fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .zip(cpp["cases"].as_array().unwrap())
        .enumerate()
    {
        let mut cache = m.new_cache(1).unwrap();
        let greedy = ids(&w["greedy"]);
        let mut all = m.step(&ids(&c["input_ids"]), 1, &mut cache).unwrap();
        for &t in &greedy[..greedy.len() - 1] {
            all.extend(m.step(&[t], 1, &mut cache).unwrap());
        }
        let bytes: Vec<u8> = all.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(format!("/tmp/lldump/dx_tf/{i}.bin"), bytes).unwrap();
    }
}
