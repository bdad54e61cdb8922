// Helper of train_tokenizer_cli_test: encodes and decodes with Hugging Face's `tokenizers` (the
// npm package: the Rust library through its native Node binding).
//   node hf_tokenizers.cjs TOKENIZER_DIR LINES_JSONL WHOLE_TEXT
// For each line {"text": ...} of LINES_JSONL prints {"ids": [...], "ids_special": [...],
// "decoded": "..."}: the ids without and with special tokens (the post-processor), and the
// decoding of the ids. Then one line {"whole": [...], "version": "..."}: the ids of the file
// WHOLE_TEXT encoded as one text.
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');

async function main() {
  const [dir, linesPath, wholePath] = process.argv.slice(2);
  const tok = Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
  const texts = fs.readFileSync(linesPath, 'utf8').split('\n').filter((l) => l.length > 0)
                    .map((l) => JSON.parse(l).text);
  const plain = await tok.encodeBatch(texts, { addSpecialTokens: false });
  const special = await tok.encodeBatch(texts, { addSpecialTokens: true });
  const ids = plain.map((e) => Array.from(e.getIds()));
  const decoded = await tok.decodeBatch(ids, false);
  const out = [];
  for (let i = 0; i < texts.length; i++) {
    out.push(JSON.stringify(
        { ids: ids[i], ids_special: Array.from(special[i].getIds()), decoded: decoded[i] }));
  }
  const whole = await tok.encode(fs.readFileSync(wholePath, 'utf8'), null,
                                 { addSpecialTokens: false });
  out.push(JSON.stringify({
    whole: Array.from(whole.getIds()),
    version: require('tokenizers/package.json').version,
  }));
  fs.writeSync(1, out.join('\n') + '\n');
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
