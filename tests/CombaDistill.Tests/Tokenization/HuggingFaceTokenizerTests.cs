using System.Text;
using CombaDistill.IO;
using CombaDistill.Tests.Support;
using CombaDistill.Tokenization;

namespace CombaDistill.Tests.Tokenization;

public class HuggingFaceTokenizerTests
{
    /// <summary>
    /// 10,000 varied strings per tokenizer.json, ids equal to @lenml/tokenizers' (a port of transformers.js) both ways:
    /// our encoding of each string, and our decoding of the reference ids (special tokens skipped).
    /// </summary>
    [Theory]
    [InlineData("llama3", "byte-level BPE", 128256)]
    [InlineData("qwen3", "byte-level BPE", 151669)]
    [InlineData("llama2", "SentencePiece-style BPE", 32000)]
    public void Real_tokenizer_json_matches_an_independent_implementation_on_10000_strings(string name, string kind, int vocabSize)
    {
        var folder = TokenizerReference.TokenizerFolder(name);
        var tokenizer = Assert.IsType<HuggingFaceTokenizer>(TokenizerLoader.Load(folder));
        Assert.Equal(kind, tokenizer.Kind);
        Assert.Equal(vocabSize, tokenizer.VocabSize);

        var specials = tokenizer.SpecialTokens.Values.Take(6).Append("<|im_start|>").Append("<s>").Append("</s>").Distinct().ToList();
        var texts = TokenizerReference.Strings(10_000, specials, seed: name.Length * 7919);
        var reference = TokenizerReference.Encode(folder, texts);

        var encodeMismatches = new List<string>();
        var decodeMismatches = new List<string>();
        for (int i = 0; i < texts.Count; i++)
        {
            var ids = tokenizer.Encode(texts[i], addBos: false);
            if (!ids.SequenceEqual(reference[i].Ids))
                encodeMismatches.Add($"#{i} {Show(texts[i])}: ours [{string.Join(",", ids)}] reference [{string.Join(",", reference[i].Ids)}]");
            var decoded = tokenizer.Decode(reference[i].Ids);
            if (decoded != reference[i].Text)
                decodeMismatches.Add($"#{i} ids [{string.Join(",", reference[i].Ids)}]: ours {Show(decoded)} reference {Show(reference[i].Text)}");
        }
        Assert.True(encodeMismatches.Count == 0, $"{encodeMismatches.Count} of {texts.Count} encodings differ:\n{string.Join("\n", encodeMismatches.Take(10))}");
        Assert.True(decodeMismatches.Count == 0, $"{decodeMismatches.Count} of {texts.Count} decodings differ:\n{string.Join("\n", decodeMismatches.Take(10))}");
    }

    /// <summary>
    /// Mistral v0.3 and newer Llama 2 conversions write the same SentencePiece-style model with a Metaspace
    /// pre-tokenizer (add_prefix_space with prepend_scheme "first", no split; the reference needs add_prefix_space, which
    /// tokenizers written before version 0.19 carry) and a Metaspace decoder instead of Prepend/Replace normalizers:
    /// the 32k vocabulary rewritten that way, against the reference on 10,000 strings.
    /// </summary>
    [Fact]
    public void Metaspace_form_of_the_sentencepiece_style_file_matches_the_independent_implementation()
    {
        using var dir = new TempDir();
        var source = TokenizerReference.TokenizerFolder("llama2");
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(source, "tokenizer.json")))!.AsObject();
        json["normalizer"] = null;
        json["pre_tokenizer"] = System.Text.Json.Nodes.JsonNode.Parse("""{"type": "Metaspace", "replacement": "▁", "add_prefix_space": true, "prepend_scheme": "first", "split": false}""");
        json["decoder"] = System.Text.Json.Nodes.JsonNode.Parse("""{"type": "Metaspace", "replacement": "▁", "add_prefix_space": true, "prepend_scheme": "first", "split": false}""");
        File.WriteAllText(dir["tokenizer.json"], json.ToJsonString());
        File.Copy(Path.Combine(source, "tokenizer_config.json"), dir["tokenizer_config.json"]);

        var tokenizer = TokenizerLoader.Load(dir.Path);
        var texts = TokenizerReference.Strings(10_000, ["<s>", "</s>", "<unk>"], seed: 77);
        var reference = TokenizerReference.Encode(dir.Path, texts);
        var mismatches = texts.Select((t, i) => (t, i)).Where(e => !tokenizer.Encode(e.t, addBos: false).SequenceEqual(reference[e.i].Ids)
                || tokenizer.Decode(reference[e.i].Ids) != reference[e.i].Text)
            .Select(e => $"#{e.i} {Show(e.t)}: ours [{string.Join(",", tokenizer.Encode(e.t, addBos: false))}] {Show(tokenizer.Decode(reference[e.i].Ids))}, reference [{string.Join(",", reference[e.i].Ids)}] {Show(reference[e.i].Text)}")
            .ToList();
        Assert.True(mismatches.Count == 0, $"{mismatches.Count} of {texts.Count} differ:\n{string.Join("\n", mismatches.Take(10))}");
    }

    [Fact]
    public void Bos_and_eos_come_from_tokenizer_config_and_the_post_processor()
    {
        var llama3 = (HuggingFaceTokenizer)TokenizerLoader.Load(TokenizerReference.TokenizerFolder("llama3"));
        // This file's post-processor is ByteLevel (no template) and tokenizer_config.json has no add_bos_token: no BOS by default.
        Assert.Equal((128000, 128001, false), (llama3.BosId, llama3.EosId, llama3.AddsBos));
        Assert.Equal("<|begin_of_text|>", llama3.TokenText(llama3.BosId));
        Assert.Equal([128000, 9906], llama3.Encode("Hello", addBos: true));

        // Qwen names no BOS: the end-of-text token separates documents; EOS is tokenizer_config.json's <|im_end|>.
        var qwen = (HuggingFaceTokenizer)TokenizerLoader.Load(TokenizerReference.TokenizerFolder("qwen3"));
        Assert.Equal((151645, 151645, false), (qwen.BosId, qwen.EosId, qwen.AddsBos));
        // config.json's ids win, as for the other tokenizers.
        var qwenBase = (HuggingFaceTokenizer)TokenizerLoader.Load(TokenizerReference.TokenizerFolder("qwen3"), bosId: 151643, eosId: 151643);
        Assert.Equal((151643, 151643), (qwenBase.BosId, qwenBase.EosId));

        var llama2 = (HuggingFaceTokenizer)TokenizerLoader.Load(TokenizerReference.TokenizerFolder("llama2"));
        Assert.Equal((1, 2, true), (llama2.BosId, llama2.EosId, llama2.AddsBos));
    }

    [Fact]
    public void Streaming_decoding_gives_the_whole_decoding()
    {
        foreach (var name in new[] { "qwen3", "llama2" })
        {
            var tokenizer = TokenizerLoader.Load(TokenizerReference.TokenizerFolder(name));
            foreach (var text in new[] { "Hello wörld 😀 中文 \U00020000!", "  two leading spaces", "<|im_start|>user\nhi" })
            {
                var ids = tokenizer.Encode(text, addBos: true);
                var stream = new StreamingDecoder(tokenizer);
                var sb = new StringBuilder();
                foreach (int id in ids) sb.Append(stream.Append(id));
                sb.Append(stream.Flush());
                Assert.Equal(tokenizer.Decode(ids), sb.ToString());
            }
        }
    }

    [Fact]
    public void Byte_level_encoding_decodes_back_to_the_text()
    {
        var tokenizer = TokenizerLoader.Load(TokenizerReference.TokenizerFolder("llama3"));
        foreach (var text in TokenizerReference.Strings(500, [], seed: 3))
            Assert.Equal(text, tokenizer.Decode(tokenizer.Encode(text, addBos: true)));
    }

    [Fact]
    public void A_small_sentencepiece_style_file_falls_back_to_bytes_and_honours_added_token_options()
    {
        using var dir = new TempDir();
        // Pieces a, b, ab, ▁ab; byte tokens for every byte; no merge reaches "▁ab" except through ▁ + ab.
        var vocab = new Dictionary<string, int> { ["<unk>"] = 0, ["<s>"] = 1, ["</s>"] = 2 };
        for (int b = 0; b < 256; b++) vocab[$"<0x{b:X2}>"] = 3 + b;
        foreach (var piece in new[] { "▁", "a", "b", "ab", "▁ab" }) vocab[piece] = vocab.Count;
        File.WriteAllText(dir["tokenizer.json"], """
            {"version": "1.0",
             "added_tokens": [
               {"id": 0, "content": "<unk>", "special": true, "normalized": false, "lstrip": false, "rstrip": false, "single_word": false},
               {"id": 1, "content": "<s>", "special": true, "normalized": false, "lstrip": false, "rstrip": false, "single_word": false},
               {"id": 2, "content": "</s>", "special": true, "normalized": false, "lstrip": false, "rstrip": false, "single_word": false},
               {"id": XID, "content": "[X]", "special": false, "normalized": false, "lstrip": true, "rstrip": true, "single_word": false}],
             "normalizer": null,
             "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "add_prefix_space": true, "prepend_scheme": "first", "split": false},
             "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                                "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
             "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                         {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
             "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": true,
                       "vocab": VOCAB, "merges": [["a", "b"], ["▁", "ab"]]}}
            """.Replace("XID", $"{vocab.Count}").Replace("VOCAB", System.Text.Json.JsonSerializer.Serialize(vocab)));
        File.WriteAllText(dir["tokenizer_config.json"], """{"bos_token": "<s>", "eos_token": {"content": "</s>"}}""");
        var t = Assert.IsType<HuggingFaceTokenizer>(TokenizerLoader.Load(dir.Path));
        int Id(string piece) => vocab[piece];
        int Byte(int b) => 3 + b;
        // "ab" at the start gets the prepended ▁ and merges to ▁ab; "é" is not a piece: its two UTF-8 bytes.
        Assert.Equal([1, Id("▁ab"), Id("▁"), Byte(0xC3), Byte(0xA9), Id("b")], t.Encode("ab éb", addBos: true));
        // [X] swallows the spaces around it (lstrip, rstrip); the text after it is not at the start, so no ▁ is prepended.
        Assert.Equal([Id("▁ab"), vocab.Count, Id("ab")], t.Encode("ab  [X]  ab", addBos: false));
        Assert.Equal("ab éb", t.Decode(t.Encode("ab éb", addBos: true)));
        Assert.Equal((1, 2, true), (t.BosId, t.EosId, t.AddsBos));
        Assert.Contains("SentencePiece-style BPE tokenizer.json", t.Description);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Ignore_merges_takes_a_word_found_whole_in_the_vocabulary(bool ignoreMerges)
    {
        using var dir = new TempDir();
        // "ab" and "Ġab" are tokens but no merge makes them: only ignore_merges reaches them.
        var vocab = new Dictionary<string, int> { ["a"] = 0, ["b"] = 1, ["Ġ"] = 2, ["ab"] = 3, ["Ġab"] = 4 };
        File.WriteAllText(dir["tokenizer.json"], """
            {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
             "decoder": {"type": "ByteLevel"}, "added_tokens": [{"id": 5, "content": "<|end|>", "special": true}],
             "model": {"type": "BPE", "ignore_merges": IGNORE, "vocab": VOCAB, "merges": []}}
            """.Replace("IGNORE", ignoreMerges ? "true" : "false").Replace("VOCAB", System.Text.Json.JsonSerializer.Serialize(vocab)));
        File.WriteAllText(dir["tokenizer_config.json"], """{"eos_token": "<|end|>"}""");
        var t = TokenizerLoader.Load(dir.Path);
        Assert.Equal(ignoreMerges ? [3, 4, 5] : [0, 1, 2, 0, 1, 5], t.Encode("ab ab<|end|>", addBos: false));
        Assert.Equal("ab ab", t.Decode(t.Encode("ab ab<|end|>", addBos: false)));
        Assert.Equal((5, 5), (t.BosId, t.EosId));
    }

    [Fact]
    public void Added_tokens_of_tokenizer_config_that_tokenizer_json_lacks_are_added()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir["tokenizer.json"], """
            {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}, "decoder": {"type": "ByteLevel"},
             "added_tokens": [{"id": 3, "content": "<|end|>", "special": true}],
             "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "Ġ": 2}, "merges": []}}
            """);
        File.WriteAllText(dir["tokenizer_config.json"], """
            {"eos_token": "<|end|>", "added_tokens_decoder": {
              "3": {"content": "<|end|>", "special": true},
              "4": {"content": "<tool>", "special": false, "lstrip": true},
              "5": {"content": "<pad>", "special": true}}}
            """);
        var t = Assert.IsType<HuggingFaceTokenizer>(TokenizerLoader.Load(dir.Path));
        Assert.Equal(6, t.VocabSize);
        Assert.Equal([0, 4, 1, 5, 3], t.Encode("a <tool>b<pad><|end|>", addBos: false));
        // <tool> is not special: decoding keeps it; <pad> and <|end|> are dropped.
        Assert.Equal("a<tool>b", t.Decode([0, 4, 1, 5, 3]));

        File.WriteAllText(dir["tokenizer_config.json"], """{"eos_token": "<|end|>", "added_tokens_decoder": {"x": {"content": "y"}}}""");
        var e = Assert.Throws<InvalidInputException>(() => TokenizerLoader.Load(dir.Path));
        Assert.Equal(dir["tokenizer_config.json"], e.FilePath);
        Assert.Contains("added_tokens_decoder[\"x\"]", e.Message);
    }

    [Theory]
    [InlineData("""{"model": {"type": "Unigram", "vocab": []}}""", "model.type: \"Unigram\" is not supported")]
    [InlineData("""{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}}""", "model.merges[0]: expected")]
    [InlineData("""{"model": {"type": "BPE", "vocab": {"a": -1}}}""", "model.vocab[\"a\"]: expected a non-negative integer id")]
    [InlineData("""{"pre_tokenizer": {"type": "Whitespace"}, "model": {"type": "BPE", "vocab": {"a": 0}}}""", "pre_tokenizer: pre-tokenizer type \"Whitespace\" is not supported")]
    [InlineData("""{"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(["}, "behavior": "Isolated"}, "model": {"type": "BPE", "vocab": {"a": 0}}}""", "pre_tokenizer.pattern.Regex: not a regular expression")]
    [InlineData("""{"normalizer": {"type": "Sequence", "normalizers": [{"type": "Precompiled"}]}, "model": {"type": "BPE", "vocab": {"a": 0}}}""", "normalizer.normalizers[0]: normalizer type \"Precompiled\" is not supported")]
    [InlineData("""{"model": {"type": "BPE", "vocab": {"a": 0}}}""", "eos_token: no end-of-text token is named")]
    [InlineData("""{"model": {"type": "BPE", "vocab": {"a": 0}}, "added_tokens": [{"id": 1, "content": ""}]}""", "added_tokens[0].content: is empty")]
    public void Bad_tokenizer_json_names_the_file_and_field(string json, string message)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir["tokenizer.json"], json);
        var e = Assert.Throws<InvalidInputException>(() => TokenizerLoader.Load(dir.Path));
        Assert.Equal(dir["tokenizer.json"], e.FilePath);
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void A_bos_token_that_is_not_a_token_names_tokenizer_config()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir["tokenizer.json"], """{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}}}""");
        File.WriteAllText(dir["tokenizer_config.json"], """{"bos_token": "<s>", "eos_token": "b"}""");
        var e = Assert.Throws<InvalidInputException>(() => TokenizerLoader.Load(dir.Path));
        Assert.Equal(dir["tokenizer_config.json"], e.FilePath);
        Assert.Contains("bos_token: \"<s>\" is not a token", e.Message);
    }

    static string Show(string s) => System.Text.Json.JsonSerializer.Serialize(s);
}
