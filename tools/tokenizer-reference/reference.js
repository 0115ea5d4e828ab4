// Reference token ids from @lenml/tokenizers (a port of transformers.js' tokenizers) for CombaDistill's tests.
// usage: node reference.js TOKENIZER_DIR INPUT.jsonl OUTPUT.jsonl
//   TOKENIZER_DIR holds tokenizer.json and tokenizer_config.json.
//   Each input line is a JSON string. Each output line is
//   {"ids": [...], "text": "..."}: the ids of encoding the string without special tokens added, and the text
//   those ids decode back to with special tokens skipped and no clean-up of tokenization spaces.
"use strict";
const fs = require("fs");
const path = require("path");
const { TokenizerLoader } = require("@lenml/tokenizers");

const [dir, input, output] = process.argv.slice(2);
if (!dir || !input || !output) {
  console.error("usage: node reference.js TOKENIZER_DIR INPUT.jsonl OUTPUT.jsonl");
  process.exit(2);
}
const read = (name) => JSON.parse(fs.readFileSync(path.join(dir, name), "utf8"));
const tokenizer = TokenizerLoader.fromPreTrained({
  tokenizerJSON: read("tokenizer.json"),
  tokenizerConfig: read("tokenizer_config.json"),
});
const lines = fs.readFileSync(input, "utf8").split("\n").filter((l) => l.length > 0);
const out = [];
for (const line of lines) {
  const text = JSON.parse(line);
  const ids = tokenizer.encode(text, { add_special_tokens: false });
  const decoded = ids.length === 0 ? "" : tokenizer.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false });
  out.push(JSON.stringify({ ids, text: decoded }));
}
fs.writeFileSync(output, out.join("\n") + "\n");
