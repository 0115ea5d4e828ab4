using CombaDistill.IO;
using CombaDistill.Tokenization;

namespace CombaDistill.Evaluation;

/// <summary>
/// A student is compared with its teacher token by token, which only means something when both
/// read text into the same ids: same vocabulary size, same BOS/EOS, same encodings.
/// </summary>
public static class TokenizerCompatibility
{
    static readonly string[] Probes =
    [
        "Once upon a time, there was a little girl named Lily.",
        "The quick brown fox jumps over the lazy dog. 0123456789",
        "  Leading spaces, tabs\tand\nnewlines; punctuation!? \"quotes\" (brackets) -- dashes",
        "Ünïcödé, 日本語, emoji 🙂 and math ∑ x² ≤ ∞",
    ];

    /// <summary>
    /// Throws naming the model's folder and what differs. Besides fixed probes it encodes the
    /// first few non-empty lines of <paramref name="dataPath"/> (when given), and a mismatch there
    /// names the data file's line.
    /// </summary>
    public static void Check(ITokenizer model, string modelFolder, ITokenizer teacher, string teacherFolder, string? dataPath = null, int dataLines = 5)
    {
        InvalidInputException Mismatch(string what) =>
            new(modelFolder, $"tokenizer ({model.Description}) does not match the teacher's ({teacher.Description}, {teacherFolder}): {what}");
        if (model.VocabSize != teacher.VocabSize) throw Mismatch($"vocabulary of {model.VocabSize} tokens vs {teacher.VocabSize}");
        if (model.BosId != teacher.BosId) throw Mismatch($"BOS id {model.BosId} vs {teacher.BosId}");
        if (model.EosId != teacher.EosId) throw Mismatch($"EOS id {model.EosId} vs {teacher.EosId}");
        foreach (var probe in Probes) Compare(probe, "the probe text");
        if (dataPath is not null && File.Exists(dataPath))
        {
            var line = 0;
            foreach (var text in File.ReadLines(dataPath).Take(1000))
            {
                line++;
                if (string.IsNullOrWhiteSpace(text)) continue;
                Compare(text, $"line {line} of {dataPath}");
                if (--dataLines == 0) break;
            }
        }

        void Compare(string text, string where)
        {
            var a = model.Encode(text, addBos: false);
            var b = teacher.Encode(text, addBos: false);
            if (a.SequenceEqual(b)) return;
            var at = 0;
            while (at < a.Length && at < b.Length && a[at] == b[at]) at++;
            string Id(int[] ids) => at < ids.Length ? ids[at].ToString() : "end";
            throw Mismatch($"{where} encodes differently (\"{Shorten(text)}\": token {at} is {Id(a)} vs {Id(b)})");
        }
    }

    static string Shorten(string text) => text.Length <= 40 ? text : text[..40] + "…";
}
