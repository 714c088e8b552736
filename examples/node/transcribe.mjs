// Reference transcriber for a granite-onnx bundle: onnxruntime-node (CPU) and tokenizer.json, no Python.
// usage: node examples/node/transcribe.mjs BUNDLE AUDIO.wav [MORE.wav ...] [--tier T] [--max-new-tokens N]
//        [--features-dir DIR]  (also writes each file's input_features there as raw float32, for checking)
// Runs frontend -> encoder -> prompt_encode -> decode_step (greedy); a CTC bundle (metadata contract "ctc"):
// frontend -> ctc, then greedy CTC decoding (argmax per frame, merge repeats, drop the blank). Prints one JSON
// object per file, so the last line is {"text", "token_ids", "prompt_ids", "audio_token_count", "tier", ...}.
// Errors: one line, exit 2.
import fs from "node:fs";
import path from "node:path";
import * as ort from "onnxruntime-node";
import { Tokenizer } from "@huggingface/tokenizers";

const GRAPHS = ["encoder", "prompt_encode", "decode_step"];
const CTC_GRAPHS = ["ctc"];

function fail(message) {
  console.error(`error: ${message}`);
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { tier: null, maxNewTokens: 200, featuresDir: null, positional: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--tier") opts.tier = argv[++i] ?? fail("--tier needs a value");
    else if (argv[i] === "--max-new-tokens") opts.maxNewTokens = Number(argv[++i]);
    else if (argv[i] === "--features-dir") opts.featuresDir = argv[++i] ?? fail("--features-dir needs a value");
    else opts.positional.push(argv[i]);
  }
  if (opts.positional.length < 2) fail("usage: transcribe.mjs BUNDLE AUDIO.wav [MORE.wav ...] [--tier T] [--max-new-tokens N]");
  if (!Number.isInteger(opts.maxNewTokens) || opts.maxNewTokens < 1) fail("--max-new-tokens must be a positive integer");
  return opts;
}

// RIFF/WAVE: PCM16 (divided by 32768, as libsndfile does) or 32-bit float; channels averaged to mono.
function readWav(file, rate) {
  if (!fs.existsSync(file)) fail(`audio file ${file} does not exist`);
  const buf = fs.readFileSync(file);
  if (buf.toString("ascii", 0, 4) !== "RIFF" || buf.toString("ascii", 8, 12) !== "WAVE") fail(`${file} is not a wav file`);
  let fmt = null;
  for (let at = 12; at + 8 <= buf.length; ) {
    const id = buf.toString("ascii", at, at + 4), size = buf.readUInt32LE(at + 4), body = at + 8;
    if (id === "fmt ") {
      let format = buf.readUInt16LE(body);
      if (format === 0xfffe) format = buf.readUInt16LE(body + 24); // WAVE_FORMAT_EXTENSIBLE: the sub-format
      fmt = { format, channels: buf.readUInt16LE(body + 2), rate: buf.readUInt32LE(body + 4), bits: buf.readUInt16LE(body + 14) };
    } else if (id === "data") {
      if (!fmt) fail(`${file}: data before fmt chunk`);
      if (fmt.rate !== rate) fail(`${file} is ${fmt.rate} Hz; the bundle needs ${rate} Hz (resample it first)`);
      const pcm16 = fmt.format === 1 && fmt.bits === 16, f32 = fmt.format === 3 && fmt.bits === 32;
      if (!pcm16 && !f32) fail(`${file}: only 16-bit PCM and 32-bit float wav are read (format ${fmt.format}, ${fmt.bits} bits)`);
      const width = fmt.bits / 8, frames = Math.floor(Math.min(size, buf.length - body) / (width * fmt.channels));
      const out = new Float32Array(frames);
      for (let t = 0; t < frames; t++) {
        let sum = 0;
        for (let c = 0; c < fmt.channels; c++) {
          const o = body + (t * fmt.channels + c) * width;
          sum += pcm16 ? buf.readInt16LE(o) / 32768 : buf.readFloatLE(o);
        }
        out[t] = sum / fmt.channels;
      }
      return out;
    }
    at = body + size + (size % 2);
  }
  fail(`${file} has no data chunk`);
}

// The file each graph of a tier runs (FP32 when tier is null); a tier may declare graphs it keeps in FP32.
function graphFiles(bundle, meta, tier) {
  const fp32 = tier ? (meta.quantisation?.[tier]?.fp32_graphs ?? []) : [];
  return Object.fromEntries((meta.contract === "ctc" ? CTC_GRAPHS : GRAPHS).map((g) => {
    const file = path.join(bundle, tier && !fp32.includes(g) ? `${g}_${tier}.onnx` : `${g}.onnx`);
    if (!fs.existsSync(file)) fail(`${file} is missing (tier ${tier ?? "fp32"})`);
    return [g, file];
  }));
}

const argmax = (data, offset, n) => {
  let best = 0;
  for (let i = 1; i < n; i++) if (data[offset + i] > data[offset + best]) best = i;
  return best;
};
const ids64 = (ids) => new ort.Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, ids.length]);
const ones64 = (n) => new ort.Tensor("int64", new BigInt64Array(n).fill(1n), [1, n]);

async function transcribe(audioFile, sessions, meta, tokenizer, opts) {
  const { audio, prompt } = meta;
  const { frontend, encoder, promptEncode, decodeStep } = sessions;
  const start = performance.now();
  const samples = readWav(audioFile, audio.sampling_rate);
  if (samples.length < audio.min_samples) fail(`${audioFile} is ${samples.length} samples long; the front-end needs at least ${audio.min_samples}`);
  const fe = await frontend.run({
    waveform: new ort.Tensor("float32", samples, [1, samples.length]),
    num_samples: new ort.Tensor("int64", BigInt64Array.from([BigInt(samples.length)]), [1]),
  });
  const audioTokens = Number(fe.audio_token_count.data[0]);
  const featuresFile = dumpFeatures(opts, audioFile, fe.input_features);
  const { audio_embeds } = await encoder.run({ input_features: fe.input_features });
  if (audio_embeds.dims[1] !== audioTokens) fail(`the encoder gave ${audio_embeds.dims[1]} embeddings, the front-end counts ${audioTokens}`);

  const promptIds = [...prompt.prefix_ids, ...Array(audioTokens).fill(prompt.audio_token_id), ...prompt.suffix_ids];
  if (promptIds.length + opts.maxNewTokens > prompt.max_positions) fail(`prompt of ${promptIds.length} tokens + ${opts.maxNewTokens} new tokens exceeds ${prompt.max_positions} positions: split the audio`);
  const seq = promptIds.length;
  let out = await promptEncode.run({
    input_ids: ids64(promptIds), audio_embeds, attention_mask: ones64(seq),
    position_ids: new ort.Tensor("int64", BigInt64Array.from({ length: seq }, (_, i) => BigInt(i)), [1, seq]),
  });

  const eos = new Set(prompt.eos_token_ids), tokens = [];
  let past = seq, stoppedOnEos = false;
  for (;;) {
    const token = argmax(out.logits.data, 0, out.logits.dims[1]);
    if (eos.has(token)) { stoppedOnEos = true; break; }
    tokens.push(token);
    if (tokens.length === opts.maxNewTokens) break;
    const feeds = { input_ids: ids64([token]), attention_mask: ones64(past + 1),
      position_ids: new ort.Tensor("int64", BigInt64Array.from([BigInt(past)]), [1, 1]) };
    for (const name of decodeStep.inputNames) {
      if (name.startsWith("past_key_values.")) feeds[name] = out[name.replace("past_key_values.", "present.")];
    }
    out = await decodeStep.run(feeds);
    past += 1;
  }
  // As the Python runtime decodes (tokenizers' decode, no clean-up of spaces), then trimmed.
  const text = tokenizer.decode(tokens, { skip_special_tokens: true, clean_up_tokenization_spaces: false }).trim();
  return {
    file: audioFile, features_file: featuresFile, features_shape: fe.input_features.dims, text, token_ids: tokens, prompt_ids: promptIds, audio_token_count: audioTokens,
    tier: opts.tier ?? "fp32", stopped_on_eos: stoppedOnEos, audio_seconds: samples.length / audio.sampling_rate,
    seconds: (performance.now() - start) / 1000, onnxruntime: ort.env.versions?.common ?? null,
  };
}

function dumpFeatures(opts, audioFile, features) {
  if (!opts.featuresDir) return null;
  const file = path.join(opts.featuresDir, `${path.basename(audioFile, path.extname(audioFile))}.f32`);
  const f = features.data;
  fs.writeFileSync(file, Buffer.from(f.buffer, f.byteOffset, f.byteLength));
  return file;
}

// A CTC bundle: frontend.onnx gives the features and their mask, ctc.onnx the logits per (subsampled) frame.
async function transcribeCtc(audioFile, sessions, meta, tokenizer, opts) {
  const { audio, ctc_decode: decode } = meta;
  const start = performance.now();
  const samples = readWav(audioFile, audio.sampling_rate);
  if (samples.length < audio.min_samples) fail(`${audioFile} is ${samples.length} samples long; the front-end needs at least ${audio.min_samples}`);
  const fe = await sessions.frontend.run({
    waveform: new ort.Tensor("float32", samples, [1, samples.length]),
    num_samples: new ort.Tensor("int64", BigInt64Array.from([BigInt(samples.length)]), [1]),
  });
  const featuresFile = dumpFeatures(opts, audioFile, fe.input_features);
  const { logits } = await sessions.ctc.run({ input_features: fe.input_features, attention_mask: fe.attention_mask });
  let valid = fe.attention_mask.data.reduce((n, v) => n + Number(v), 0);
  for (let i = 0; i < decode.subsampling; i++) valid = Math.floor(valid / 2);
  if (logits.dims[1] !== valid) fail(`ctc gave ${logits.dims[1]} frames where ${fe.input_features.dims[1]} feature rows give ${valid}`);
  const vocab = logits.dims[2], tokens = [];
  let previous = -1;
  for (let t = 0; t < valid; t++) {
    const label = argmax(logits.data, t * vocab, vocab);
    if (label !== previous && label !== decode.blank_id) tokens.push(label);
    previous = label;
  }
  const text = tokenizer.decode(tokens, { skip_special_tokens: true, clean_up_tokenization_spaces: false }).trim();
  return {
    file: audioFile, features_file: featuresFile, features_shape: fe.input_features.dims, text, token_ids: tokens, prompt_ids: [], audio_token_count: valid,
    tier: opts.tier ?? "fp32", stopped_on_eos: false, audio_seconds: samples.length / audio.sampling_rate,
    seconds: (performance.now() - start) / 1000, onnxruntime: ort.env.versions?.common ?? null,
  };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const [bundle, ...audioFiles] = opts.positional;
  const metaFile = path.join(bundle, "granite_export_metadata.json");
  if (!fs.existsSync(metaFile)) fail(`${metaFile} is missing: run \`granite-onnx metadata --bundle ${bundle}\``);
  const meta = JSON.parse(fs.readFileSync(metaFile, "utf8"));
  const ctc = meta.contract === "ctc";
  if (!meta.audio?.frontend || !(ctc ? meta.ctc_decode : meta.prompt?.prefix_ids)) fail(`${metaFile} predates the front-end graph: export the bundle again`);

  // Sessions are opened by path, so each graph's sidecar (and a shared one) resolves beside it.
  const open = (file) => ort.InferenceSession.create(file, { executionProviders: ["cpu"] });
  const files = graphFiles(bundle, meta, opts.tier);
  const read = (name) => JSON.parse(fs.readFileSync(path.join(bundle, name), "utf8"));
  const configFile = path.join(bundle, "tokenizer_config.json");
  const tokenizer = new Tokenizer(read("tokenizer.json"), fs.existsSync(configFile) ? read("tokenizer_config.json") : {});
  if (ctc) {
    const [frontend, ctcSession] = await Promise.all([path.join(bundle, meta.audio.frontend), files.ctc].map(open));
    for (const file of audioFiles) {
      console.log(JSON.stringify(await transcribeCtc(file, { frontend, ctc: ctcSession }, meta, tokenizer, opts)));
    }
    return;
  }
  const [frontend, encoder, promptEncode, decodeStep] = await Promise.all(
    [path.join(bundle, meta.audio.frontend), files.encoder, files.prompt_encode, files.decode_step].map(open));
  for (const file of audioFiles) {
    const result = await transcribe(file, { frontend, encoder, promptEncode, decodeStep }, meta, tokenizer, opts);
    console.log(JSON.stringify(result));
  }
}

main().catch((err) => fail(String(err?.message ?? err).split("\n")[0]));
