using System.Buffers.Binary;
using CombaDistill.Distillation;
using CombaDistill.IO;
using CombaDistill.Tests.Support;
using CombaDistill.Tokenization;
using static TorchSharp.torch;

namespace CombaDistill.Tests.Distillation;

public sealed class DataTests : IDisposable
{
    readonly TempDir dir = new();
    static readonly Llama2cTokenizer Tok512 = Llama2cTokenizer.Load(Shared.Tok512Bin);

    public void Dispose() => dir.Dispose();

    static int[] Read(DataSource source, ITokenizer tokenizer, DataRecipe options) =>
        TokenStreams.Read(source, tokenizer, options, TestContext.Current.CancellationToken);

    static DataRecipe Options(DataSource train, bool bos = true, bool eos = true, string separator = "\n\n") =>
        new() { Train = train, AddBos = bos, AddEos = eos, DocumentSeparator = separator };

    [Fact]
    public void Token_file_has_the_documented_layout()
    {
        var path = dir["a.tokens"];
        TokenFile.Write(path, [1, 513, 0, 65535], vocabSize: 65536);
        var bytes = File.ReadAllBytes(path);
        Assert.Equal(32 + 4 * 2, bytes.Length);
        Assert.Equal("CDTOKENS"u8.ToArray(), bytes[..8]);
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(8)));
        Assert.Equal(2u, BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(12)));
        Assert.Equal(4ul, BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(16)));
        Assert.Equal(65536u, BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(24)));
        Assert.Equal(new byte[] { 1, 0, 1, 2, 0, 0, 255, 255 }, bytes[32..]);
        Assert.Equal([1, 513, 0, 65535], TokenFile.Read(path, 65536));
        Assert.Equal([1, 513], TokenFile.Read(path, 65536, maxTokens: 2));
    }

    [Fact]
    public void Large_vocabularies_use_four_bytes_per_token()
    {
        var path = dir["b.tokens"];
        int[] ids = [128000, 5, 128255];
        TokenFile.Write(path, ids, vocabSize: 128256);
        Assert.Equal(32 + 3 * 4, new FileInfo(path).Length);
        Assert.Equal(ids, TokenFile.Read(path, 128256));
    }

    [Fact]
    public void Damaged_or_foreign_token_files_are_refused()
    {
        var path = dir["c.tokens"];
        TokenFile.Write(path, [1, 2, 3, 4], vocabSize: 512);
        Assert.Contains("another tokenizer", Assert.Throws<InvalidInputException>(() => TokenFile.Read(path, 256)).Message);

        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^1]);
        Assert.Contains("truncated", Assert.Throws<InvalidInputException>(() => TokenFile.Read(path, 512)).Message);

        File.WriteAllText(path, "hello world, certainly not tokens");
        Assert.Contains("CDTOKENS", Assert.Throws<InvalidInputException>(() => TokenFile.Read(path, 512)).Message);

        // an id beyond the model's vocabulary in a file that recorded no vocabulary
        bytes[24] = bytes[25] = 0;
        bytes[32 + 6] = 0x10; bytes[32 + 7] = 0x02;   // token 3 = 0x0210 = 528
        File.WriteAllBytes(path, bytes);
        Assert.Contains("token 3 is 528", Assert.Throws<InvalidInputException>(() => TokenFile.Read(path, 512)).Message);
    }

    [Fact]
    public void Text_documents_are_packed_with_BOS_and_EOS()
    {
        var path = dir["t.txt"];
        File.WriteAllText(path, "Once upon a time.\nThe end.\n\n\n\nLily ran.\r\n\r\nTom sat.\n");
        var stream = Read(new DataSource(path, DataFormat.Text), Tok512, Options(new DataSource(path, DataFormat.Text)));
        int[] expected = [
            .. Tok512.Encode("Once upon a time.\nThe end.", true), Tok512.EosId,
            .. Tok512.Encode("Lily ran.", true), Tok512.EosId,
            .. Tok512.Encode("Tom sat.", true), Tok512.EosId];
        Assert.Equal(expected, stream);
        Assert.Equal(3, stream.Count(t => t == Tok512.BosId));

        var whole = Read(new DataSource(path, DataFormat.Text), Tok512, Options(new DataSource(path, DataFormat.Text), eos: false, separator: ""));
        Assert.Equal(Tok512.Encode("Once upon a time.\nThe end.\n\n\n\nLily ran.\n\nTom sat.", true), whole);

        var limited = Read(new DataSource(path, DataFormat.Text, MaxTokens: 5), Tok512, Options(new DataSource(path, DataFormat.Text)));
        Assert.Equal(expected[..5], limited);
    }

    [Fact]
    public void JSONL_records_are_documents_and_bad_lines_are_named()
    {
        var path = dir["d.jsonl"];
        File.WriteAllText(path, "{\"text\": \"Lily ran.\", \"id\": 1}\n\n{\"text\": \"Tom sat.\"}\n");
        var source = new DataSource(path, DataFormat.Jsonl);
        Assert.Equal([.. Tok512.Encode("Lily ran.", false), .. Tok512.Encode("Tom sat.", false)],
            Read(source, Tok512, Options(source, bos: false, eos: false)));

        File.AppendAllText(path, "{\"body\": \"x\"}\n");
        var e = Assert.Throws<InvalidInputException>(() => Read(source, Tok512, Options(source)));
        Assert.Contains("line 4", e.Message);
        Assert.Contains("field \"text\" is missing", e.Message);
        File.WriteAllText(path, "{\"text\": \"a\"}\n{oops\n");
        Assert.Contains("line 2: not valid JSON", Assert.Throws<InvalidInputException>(() => Read(source, Tok512, Options(source))).Message);
    }

    [Fact]
    public void Windows_overlap_by_one_token_and_cover_the_stream()
    {
        var stream = Enumerable.Range(100, 23).ToArray();
        var packed = new PackedSequences(stream, 5);
        Assert.Equal(4, packed.Count);                                  // (23 − 1) / 5
        Assert.Equal([100, 101, 102, 103, 104, 105], packed.Window(0).ToArray());
        Assert.Equal([105, 106, 107, 108, 109, 110], packed.Window(1).ToArray());
        using var batch = packed.Batch([3, 0]);
        Assert.Equal([2L, 6], batch.shape);
        Assert.Equal([115L, 116, 117, 118, 119, 120, 100, 101, 102, 103, 104, 105], batch.data<long>().ToArray());
    }

    [Fact]
    public void Shuffling_is_a_permutation_per_epoch_fixed_by_seed()
    {
        var a = ShuffledBatches.Permutation(1000, seed: 5, epoch: 0);
        Assert.Equal(Enumerable.Range(0, 1000), a.Order());
        Assert.Equal(a, ShuffledBatches.Permutation(1000, 5, 0));
        Assert.NotEqual(a, ShuffledBatches.Permutation(1000, 5, 1));
        Assert.NotEqual(a, ShuffledBatches.Permutation(1000, 6, 0));
        Assert.NotEqual(Enumerable.Range(0, 1000), a);
    }

    [Fact]
    public void Every_window_is_visited_once_per_epoch()
    {
        var packed = new PackedSequences(Enumerable.Range(0, 7 * 4 + 1).ToArray(), 4);   // 7 windows
        var batches = new ShuffledBatches(packed, seed: 3);
        var firsts = new List<long>();
        for (var i = 0; i < 7; i++)
        {
            using var b = batches.Next(2);
            var ids = b.data<long>().ToArray();
            firsts.Add(ids[0]);
            firsts.Add(ids[5]);
        }
        // 14 windows taken = exactly two epochs, each a permutation of the 7 window starts 0, 4, …, 24
        Assert.Equal(new DataPosition(1, 7), batches.Position);
        Assert.Equal(Enumerable.Range(0, 7).Select(i => 4L * i), firsts.Take(7).Order());
        Assert.Equal(Enumerable.Range(0, 7).Select(i => 4L * i), firsts.Skip(7).Order());
    }

    [Fact]
    public void A_position_restores_the_exact_batch_sequence()
    {
        var packed = new PackedSequences(Enumerable.Range(0, 50 * 8 + 1).Select(i => i % 512).ToArray(), 8);
        var continuous = new ShuffledBatches(packed, seed: 11);
        for (var i = 0; i < 13; i++) continuous.Next(3).Dispose();        // into the second epoch (39 of 50 + …)
        var saved = continuous.Position;
        var resumed = new ShuffledBatches(packed, seed: 11, start: saved);
        for (var i = 0; i < 30; i++)
        {
            using var expected = continuous.Next(3);
            using var actual = resumed.Next(3);
            Assert.Equal(expected.data<long>().ToArray(), actual.data<long>().ToArray());
        }
        Assert.Equal(continuous.Position, resumed.Position);
        Assert.True(continuous.Position.Epoch >= 2);
    }

    [Fact]
    public void Held_out_split_is_the_tail()
    {
        var stream = Enumerable.Range(0, 1000).ToArray();
        var (train, heldOut) = TokenStreams.SplitTail(stream, 0.1);
        Assert.Equal(stream[..900], train);
        Assert.Equal(stream[900..], heldOut);
    }
}
