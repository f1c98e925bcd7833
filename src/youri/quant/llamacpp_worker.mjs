// llama.cpp through node-llama-cpp's prebuilt binaries: tokenise texts and score token rows of one GGUF file.
// Run by youri/quant/llamacpp.py: node llamacpp_worker.mjs NODE_LLAMA_CPP_DIR REQUEST.json OUT_DIR
// Request: {model, texts: [string], rows: [[token id]], threads, bench?}. Stdout: one JSON line
// {vocab, bos, eos, tokens: [[id]], bench?}; OUT_DIR/row<i>.f32: next-token probabilities [len(row), vocab] float32,
// softmax of the raw logits (temperature 1, no top-k/top-p), for every position of row i.
// bench: {prompt: [id], new_tokens, repeats}: greedy generation from an empty context, timed per run with the wall
// clock: prefill_s = until the first new token (the whole prompt in one batch, then one sample), gen_s = the rest.
import {readFileSync, writeFileSync} from "node:fs";
import {join} from "node:path";
import {pathToFileURL} from "node:url";

const [, , moduleDir, requestFile, outDir] = process.argv;
const {getLlama} = await import(pathToFileURL(join(moduleDir, "node_modules", "node-llama-cpp", "dist", "index.js")));
const request = JSON.parse(readFileSync(requestFile, "utf8"));
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath: request.model});
// specialTokens = false: text such as "</s>" stays text, as youri's HF tokenizers treat user text.
const tokens = request.texts.map((text) => Array.from(model.tokenize(text, false)));
let vocab = 0;
if (request.rows.length) {
    const longest = Math.max(...request.rows.map((row) => row.length));
    const ctx = await model.createContext({contextSize: Math.max(longest, 32), threads: request.threads || 0});
    const sequence = ctx.getSequence();
    for (const [i, row] of request.rows.entries()) {
        await sequence.clearHistory(); // each row is scored from an empty context
        const steps = row.map((token) => [token, {generateNext: {probabilities: true}}]);
        const results = await sequence.controlledEvaluate(steps, {temperature: 1});
        vocab = results[0].next.probabilities.size;
        const probs = new Float32Array(row.length * vocab);
        results.forEach((result, t) => {
            for (const [token, p] of result.next.probabilities) probs[t * vocab + token] = p;
        });
        writeFileSync(join(outDir, `row${i}.f32`), Buffer.from(probs.buffer));
    }
}
let bench;
if (request.bench) {
    const {prompt, new_tokens: newTokens, repeats} = request.bench;
    const ctx = await model.createContext({
        contextSize: prompt.length + newTokens + 8, batchSize: prompt.length, threads: request.threads || 0,
    });
    const sequence = ctx.getSequence();
    bench = [];
    for (let r = 0; r < (repeats || 1); r++) {
        await sequence.clearHistory();
        const generated = [];
        const start = performance.now();
        let first = start;
        for await (const token of sequence.evaluate(prompt, {temperature: 0})) {
            if (!generated.length) first = performance.now();
            generated.push(token);
            if (generated.length >= newTokens) break; // eos is not a stop: exactly newTokens, like youri's side
        }
        const end = performance.now();
        bench.push({prefill_s: (first - start) / 1000, gen_s: (end - first) / 1000, tokens: generated});
    }
}
console.log(JSON.stringify({vocab, bos: model.tokens.bos, eos: model.tokens.eos, tokens, bench}));
