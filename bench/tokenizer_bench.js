// Helper of bench/tokenizer_bench.sh, run with Node:
//   node tokenizer_bench.js corpus TOKENIZER_DIR OUT       writes the benchmark text (>= 2 MB)
//   node tokenizer_bench.js hf TOKENIZER_DIR TEXT RUNS IDS  times Hugging Face's encode of TEXT
// The hf mode prints one JSON line with MB/s (best and median of RUNS encodes) and writes the
// ids of the last run, comma-separated, to IDS for comparison with ours.
'use strict';
const fs = require('fs');
const path = require('path');

// A fixed mix of texts shipped with Debian and the test data: license texts (English prose),
// CPython standard-library sources (code), and the texts of the tokenizer test cases (many
// scripts, emoji, whitespace), in a stable order.
function buildCorpus(tokDir, out) {
  const parts = [];
  const licenses = '/usr/share/common-licenses';
  if (fs.existsSync(licenses)) {
    for (const f of fs.readdirSync(licenses).sort()) {
      const p = path.join(licenses, f);
      if (fs.statSync(p).isFile()) parts.push(fs.readFileSync(p, 'utf8'));
    }
  }
  const cases = path.join(tokDir, 'encode_cases.jsonl');
  if (fs.existsSync(cases)) {
    for (const line of fs.readFileSync(cases, 'utf8').split('\n')) {
      if (line) parts.push(JSON.parse(line).text);
    }
  }
  const pyDirs = fs.readdirSync('/usr/lib').filter((d) => /^python3\.\d+$/.test(d)).sort();
  let size = parts.reduce((n, s) => n + Buffer.byteLength(s), 0);
  for (const d of pyDirs) {
    for (const f of fs.readdirSync(path.join('/usr/lib', d)).sort()) {
      if (size >= 2e6) break;
      if (!f.endsWith('.py')) continue;
      const s = fs.readFileSync(path.join('/usr/lib', d, f), 'utf8');
      parts.push(s);
      size += Buffer.byteLength(s);
    }
  }
  if (size < 1e6) throw new Error(`benchmark text is only ${size} bytes; need 1 MB or more`);
  fs.writeFileSync(out, parts.join('\n'));
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function timeHf(tokDir, textPath, runs, idsOut) {
  const text = fs.readFileSync(textPath, 'utf8');
  const bytes = Buffer.byteLength(text);
  let encode, label;
  try {
    // The native Rust library through its Node binding (what the test data was made with).
    const { Tokenizer } = require('tokenizers');
    const tok = Tokenizer.fromFile(path.join(tokDir, 'tokenizer.json'));
    encode = async (t) => (await tok.encode(t, null, { addSpecialTokens: false })).getIds();
    label = 'tokenizers ' + require('tokenizers/package.json').version + ' (Rust, native binding)';
  } catch (e) {
    // Fallback: the pure-JavaScript port, labeled as such.
    const { Tokenizer } = await import('@huggingface/tokenizers');
    const json = JSON.parse(fs.readFileSync(path.join(tokDir, 'tokenizer.json'), 'utf8'));
    const config = JSON.parse(fs.readFileSync(path.join(tokDir, 'tokenizer_config.json'), 'utf8'));
    const tok = new Tokenizer(json, config);
    encode = async (t) => tok.encode(t, { add_special_tokens: false }).ids;
    label = '@huggingface/tokenizers (pure JavaScript; the native package failed: ' +
            e.message.split('\n')[0] + ')';
  }
  const seconds = [];
  let ids = [];
  for (let r = 0; r < runs; r++) {
    const t0 = process.hrtime.bigint();
    ids = await encode(text);
    seconds.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  fs.writeFileSync(idsOut, Array.from(ids).join(',') + '\n');
  const best = Math.min(...seconds), med = median(seconds);
  console.log(JSON.stringify({
    library: label, bytes, tokens: ids.length, runs, best_seconds: best, median_seconds: med,
    mb_per_s_best: bytes / 1e6 / best, mb_per_s_median: bytes / 1e6 / med,
  }));
}

const [mode, ...args] = process.argv.slice(2);
if (mode === 'corpus') {
  buildCorpus(args[0], args[1]);
} else if (mode === 'hf') {
  timeHf(args[0], args[1], Number(args[2]), args[3]).catch((e) => {
    console.error(e.message);
    process.exit(1);
  });
} else {
  console.error('usage: tokenizer_bench.js corpus DIR OUT | hf DIR TEXT RUNS IDS');
  process.exit(2);
}
