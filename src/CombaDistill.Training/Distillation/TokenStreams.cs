using CombaDistill.IO;
using CombaDistill.Tokenization;

namespace CombaDistill.Distillation;

/// <summary>
/// Turns a data source into one stream of token ids: text and JSONL through <see cref="TextDocuments"/> (documents
/// encoded with the teacher's tokenizer as [BOS] ids [EOS], as the recipe's add_bos and add_eos say, and concatenated);
/// a token file is read as it is.
/// </summary>
public static class TokenStreams
{
    /// <summary>The file's token stream, cut at <see cref="DataSource.MaxTokens"/>.</summary>
    public static int[] Read(DataSource source, ITokenizer tokenizer, DataRecipe options, CancellationToken cancellationToken = default)
    {
        if (source.Format == DataFormat.Tokens) return TokenFile.Read(source.Path, tokenizer.VocabSize, source.MaxTokens);
        var documents = TextDocuments.Read(source.Path, jsonl: source.Format == DataFormat.Jsonl, options.DocumentSeparator);
        var stream = TextDocuments.Encode(documents, tokenizer, options.AddBos, options.AddEos, source.MaxTokens, cancellationToken);
        if (stream.Length < 2) throw new InvalidInputException(source.Path, $"holds {stream.Length} token(s); training needs at least a few sequences");
        return stream;
    }

    /// <summary>
    /// Checks that the recipe's data files can be read as their format says (text and JSONL: UTF-8 without NUL bytes;
    /// token files: a consistent header), so that bad data is refused before a run folder is made.
    /// </summary>
    public static void Check(DataRecipe data)
    {
        foreach (var source in new[] { data.Train, data.Validation })
        {
            if (source is null) continue;
            if (source.Format == DataFormat.Tokens) TokenFile.CheckHeader(source.Path);
            else TextDocuments.Check(source.Path);
        }
    }

    /// <summary>The last <paramref name="fraction"/> of <paramref name="stream"/> held out (a contiguous tail, so no window straddles both parts).</summary>
    public static (int[] Train, int[] HeldOut) SplitTail(int[] stream, double fraction)
    {
        if (!(fraction > 0 && fraction < 1)) throw new ArgumentOutOfRangeException(nameof(fraction));
        var heldOut = (int)Math.Round(stream.Length * fraction);
        heldOut = Math.Clamp(heldOut, 2, stream.Length - 2);
        return (stream[..^heldOut], stream[^heldOut..]);
    }
}
