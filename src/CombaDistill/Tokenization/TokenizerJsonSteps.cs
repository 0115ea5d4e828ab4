using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using CombaDistill.IO;

namespace CombaDistill.Tokenization;

/// <summary>
/// The normalizer of a Hugging Face <c>tokenizer.json</c>: text → text before pre-tokenization. Supported:
/// NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace (string or regex), Strip and Sequence of these.
/// </summary>
abstract class TextNormalizer
{
    public abstract string Apply(string text);

    sealed class Chain(IReadOnlyList<TextNormalizer> steps) : TextNormalizer
    {
        public override string Apply(string text)
        {
            foreach (var step in steps) text = step.Apply(text);
            return text;
        }
    }

    sealed class Unicode(NormalizationForm form) : TextNormalizer
    {
        // A lone surrogate cannot be normalized; it stays as it is (it is encoded as U+FFFD's bytes later anyway).
        public override string Apply(string text)
        {
            try { return text.IsNormalized(form) ? text : text.Normalize(form); }
            catch (ArgumentException) { return text; }
        }
    }

    sealed class Function(Func<string, string> apply) : TextNormalizer
    {
        public override string Apply(string text) => apply(text);
    }

    /// <summary>Null when <paramref name="element"/> is JSON null (no normalizer).</summary>
    public static TextNormalizer? Parse(JsonElement element, string file, string field)
    {
        if (element.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return null;
        string type = TokenizerJsonFields.Type(element, file, field);
        switch (type)
        {
            case "Sequence":
                var steps = new List<TextNormalizer>();
                int i = 0;
                foreach (var step in TokenizerJsonFields.Array(element, "normalizers", file, field))
                    if (Parse(step, file, $"{field}.normalizers[{i++}]") is { } parsed) steps.Add(parsed);
                return new Chain(steps);
            case "NFC": return new Unicode(NormalizationForm.FormC);
            case "NFD": return new Unicode(NormalizationForm.FormD);
            case "NFKC": return new Unicode(NormalizationForm.FormKC);
            case "NFKD": return new Unicode(NormalizationForm.FormKD);
            case "Lowercase": return new Function(t => t.ToLowerInvariant());
            case "Prepend":
                string prefix = TokenizerJsonFields.String(element, "prepend", file, field);
                // Hugging Face prepends to non-empty text only.
                return new Function(t => t.Length == 0 ? t : prefix + t);
            case "Replace":
                var pattern = TokenizerJsonFields.Pattern(element, file, field);
                string content = TokenizerJsonFields.String(element, "content", file, field);
                return new Function(t => pattern.Replace(t, content.Replace("$", "$$")));
            case "Strip":
                bool left = TokenizerJsonFields.Bool(element, "strip_left", file, field, false);
                bool right = TokenizerJsonFields.Bool(element, "strip_right", file, field, false);
                return new Function(t => left && right ? t.Trim() : left ? t.TrimStart() : right ? t.TrimEnd() : t);
            default:
                throw new InvalidInputException(file, $"{field}: normalizer type \"{type}\" is not supported (supported: Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip)");
        }
    }
}

/// <summary>A piece of text on its way to the BPE model; <see cref="AtStart"/> marks the piece that begins the whole text.</summary>
readonly record struct PreToken(string Text, bool AtStart);

/// <summary>
/// The pre-tokenizer of a Hugging Face <c>tokenizer.json</c>: splits text into the words BPE runs on. Supported:
/// Split (string or regex; Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous; invert), ByteLevel
/// (add_prefix_space, use_regex with GPT-2's pattern), Metaspace (replacement, prepend_scheme, split), Digits and
/// Sequence of these. Byte-level pre-tokenizers only mark the model as byte-level here: the mapping of bytes to
/// characters is the BPE model's (Microsoft.ML.Tokenizers' byte-level BPE).
/// </summary>
abstract class PreTokenizerStep
{
    /// <summary>GPT-2's split, which ByteLevel uses when use_regex is true.</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    public abstract void Split(PreToken piece, List<PreToken> output);

    /// <summary>Whether the model works on UTF-8 bytes written in <see cref="ByteLevelAlphabet"/>.</summary>
    public virtual bool ByteLevel => false;

    public List<PreToken> Apply(IEnumerable<PreToken> pieces)
    {
        var output = new List<PreToken>();
        foreach (var piece in pieces) Split(piece, output);
        return output;
    }

    sealed class Chain(IReadOnlyList<PreTokenizerStep> steps) : PreTokenizerStep
    {
        public override bool ByteLevel => steps.Any(s => s.ByteLevel);
        public override void Split(PreToken piece, List<PreToken> output)
        {
            List<PreToken> pieces = [piece];
            foreach (var step in steps) pieces = step.Apply(pieces);
            output.AddRange(pieces);
        }
    }

    enum Behavior { Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous }

    sealed class RegexSplit(CodePointRegex regex, Behavior behavior, bool invert) : PreTokenizerStep
    {
        public override void Split(PreToken piece, List<PreToken> output)
        {
            string text = piece.Text;
            // Spans covering the text: (start, end, isDelimiter).
            var spans = new List<(int Start, int End, bool Match)>();
            int at = 0;
            foreach (var (start, length) in regex.Matches(text))
            {
                if (length == 0) continue;
                if (start > at) spans.Add((at, start, invert));
                spans.Add((start, start + length, !invert));
                at = start + length;
            }
            if (at < text.Length) spans.Add((at, text.Length, invert));

            var words = new List<(int Start, int End)>();
            switch (behavior)
            {
                case Behavior.Isolated:
                    words.AddRange(spans.Select(s => (s.Start, s.End)));
                    break;
                case Behavior.Removed:
                    words.AddRange(spans.Where(s => !s.Match).Select(s => (s.Start, s.End)));
                    break;
                case Behavior.MergedWithPrevious:
                    foreach (var s in spans)
                        if (s.Match && words.Count > 0 && words[^1].End == s.Start) words[^1] = (words[^1].Start, s.End);
                        else words.Add((s.Start, s.End));
                    break;
                case Behavior.MergedWithNext:
                    bool pending = false;
                    foreach (var s in spans)
                    {
                        if (pending) words[^1] = (words[^1].Start, s.End);
                        else words.Add((s.Start, s.End));
                        pending = s.Match;
                    }
                    break;
                case Behavior.Contiguous:
                    bool previousMatch = false;
                    foreach (var s in spans)
                    {
                        if (s.Match && previousMatch) words[^1] = (words[^1].Start, s.End);
                        else words.Add((s.Start, s.End));
                        previousMatch = s.Match;
                    }
                    break;
            }
            foreach (var (start, end) in words)
                output.Add(new PreToken(text[start..end], piece.AtStart && start == 0));
        }
    }

    sealed class ByteLevelStep(bool addPrefixSpace, CodePointRegex? regex) : PreTokenizerStep
    {
        public override bool ByteLevel => true;
        public override void Split(PreToken piece, List<PreToken> output)
        {
            string text = addPrefixSpace && !piece.Text.StartsWith(' ') ? " " + piece.Text : piece.Text;
            if (regex is null) { output.Add(piece with { Text = text }); return; }
            new RegexSplit(regex, Behavior.Isolated, invert: false).Split(piece with { Text = text }, output);
        }
    }

    sealed class MetaspaceStep(char replacement, string prependScheme, bool split) : PreTokenizerStep
    {
        public override void Split(PreToken piece, List<PreToken> output)
        {
            string text = piece.Text.Replace(' ', replacement);
            bool prepend = prependScheme == "always" || (prependScheme == "first" && piece.AtStart);
            if (prepend && !text.StartsWith(replacement)) text = replacement + text;
            if (!split) { output.Add(piece with { Text = text }); return; }
            // Each replacement character starts a new word (merged with the text that follows it).
            int start = 0;
            for (int i = 1; i <= text.Length; i++)
            {
                if (i < text.Length && text[i] != replacement) continue;
                output.Add(new PreToken(text[start..i], piece.AtStart && start == 0));
                start = i;
            }
        }
    }

    /// <summary>
    /// Metaspace's prepend_scheme; older files say add_prefix_space instead, and add_prefix_space false means never
    /// whatever the scheme says, as Hugging Face reads them.
    /// </summary>
    public static string MetaspaceScheme(JsonElement element, string file, string field)
    {
        bool addPrefixSpace = TokenizerJsonFields.Bool(element, "add_prefix_space", file, field, true);
        string scheme = element.TryGetProperty("prepend_scheme", out var s) && s.ValueKind == JsonValueKind.String ? s.GetString()! : "always";
        return addPrefixSpace ? scheme : "never";
    }

    /// <summary>Null when <paramref name="element"/> is JSON null (no pre-tokenizer).</summary>
    public static PreTokenizerStep? Parse(JsonElement element, string file, string field)
    {
        if (element.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return null;
        string type = TokenizerJsonFields.Type(element, file, field);
        switch (type)
        {
            case "Sequence":
                var steps = new List<PreTokenizerStep>();
                int i = 0;
                foreach (var step in TokenizerJsonFields.Array(element, "pretokenizers", file, field))
                    if (Parse(step, file, $"{field}.pretokenizers[{i++}]") is { } parsed) steps.Add(parsed);
                return new Chain(steps);
            case "Split":
                var pattern = TokenizerJsonFields.Pattern(element, file, field);
                string behaviorName = TokenizerJsonFields.String(element, "behavior", file, field);
                if (!Enum.TryParse<Behavior>(behaviorName, out var behavior))
                    throw new InvalidInputException(file, $"{field}.behavior: \"{behaviorName}\" is not one of {string.Join(", ", Enum.GetNames<Behavior>())}");
                return new RegexSplit(new CodePointRegex(pattern), behavior, TokenizerJsonFields.Bool(element, "invert", file, field, false));
            case "ByteLevel":
                bool useRegex = TokenizerJsonFields.Bool(element, "use_regex", file, field, true);
                return new ByteLevelStep(TokenizerJsonFields.Bool(element, "add_prefix_space", file, field, true),
                    useRegex ? new CodePointRegex(new Regex(Gpt2Pattern, RegexOptions.CultureInvariant)) : null);
            case "Metaspace":
                string replacement = TokenizerJsonFields.String(element, "replacement", file, field);
                if (replacement.Length != 1) throw new InvalidInputException(file, $"{field}.replacement: \"{replacement}\" is not one character");
                string scheme = MetaspaceScheme(element, file, field);
                if (scheme is not ("always" or "first" or "never"))
                    throw new InvalidInputException(file, $"{field}.prepend_scheme: \"{scheme}\" is not always, first or never");
                return new MetaspaceStep(replacement[0], scheme, TokenizerJsonFields.Bool(element, "split", file, field, true));
            case "Digits":
                bool individual = TokenizerJsonFields.Bool(element, "individual_digits", file, field, false);
                return new RegexSplit(new CodePointRegex(new Regex(individual ? @"\p{N}" : @"\p{N}+", RegexOptions.CultureInvariant)),
                    individual ? Behavior.Isolated : Behavior.Contiguous, invert: false);
            default:
                throw new InvalidInputException(file, $"{field}: pre-tokenizer type \"{type}\" is not supported (supported: Sequence, Split, ByteLevel, Metaspace, Digits)");
        }
    }
}

/// <summary>
/// A regex run over code points, as Hugging Face's (Oniguruma's) are. .NET matches UTF-16 code units, so a
/// letter outside the Basic Multilingual Plane (a surrogate pair) would be neither <c>\p{L}</c> nor <c>\p{N}</c>;
/// each such character is matched as one stand-in character of its own Unicode category, and the match
/// positions are mapped back.
/// </summary>
sealed class CodePointRegex(Regex regex)
{
    public IEnumerable<(int Start, int Length)> Matches(string text)
    {
        int firstSurrogate = text.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF');
        if (firstSurrogate < 0)
        {
            foreach (Match m in regex.Matches(text)) yield return (m.Index, m.Length);
            yield break;
        }
        var mapped = new StringBuilder(text.Length);
        // Position in the mapped text → position in the original, with one extra entry for the end.
        var origin = new List<int>(text.Length + 1);
        for (int i = 0; i < text.Length; i++)
        {
            origin.Add(i);
            if (char.IsSurrogatePair(text, i))
            {
                mapped.Append(StandIn(CharUnicodeInfo.GetUnicodeCategory(char.ConvertToUtf32(text[i], text[i + 1]))));
                i++;
            }
            else mapped.Append(text[i]);
        }
        origin.Add(text.Length);
        foreach (Match m in regex.Matches(mapped.ToString()))
            yield return (origin[m.Index], origin[m.Index + m.Length] - origin[m.Index]);
    }

    /// <summary>A Basic Multilingual Plane character of the same general category (none of them is whitespace or an ASCII letter of a contraction).</summary>
    static char StandIn(UnicodeCategory category) => category switch
    {
        UnicodeCategory.UppercaseLetter => 'Q',
        UnicodeCategory.LowercaseLetter => 'q',
        UnicodeCategory.TitlecaseLetter => '\u01C5',
        UnicodeCategory.ModifierLetter => '\u02B0',
        UnicodeCategory.OtherLetter => '\u05D0',
        UnicodeCategory.DecimalDigitNumber => '0',
        UnicodeCategory.LetterNumber => '\u2160',
        UnicodeCategory.OtherNumber => '\u00B2',
        UnicodeCategory.NonSpacingMark => '\u0300',
        UnicodeCategory.SpacingCombiningMark => '\u0903',
        UnicodeCategory.EnclosingMark => '\u20DD',
        UnicodeCategory.MathSymbol => '+',
        UnicodeCategory.CurrencySymbol => '$',
        UnicodeCategory.ModifierSymbol => '^',
        UnicodeCategory.OtherSymbol => '\u00A9',
        UnicodeCategory.ConnectorPunctuation => '_',
        UnicodeCategory.DashPunctuation => '-',
        UnicodeCategory.OpenPunctuation => '(',
        UnicodeCategory.ClosePunctuation => ')',
        UnicodeCategory.InitialQuotePunctuation => '\u00AB',
        UnicodeCategory.FinalQuotePunctuation => '\u00BB',
        UnicodeCategory.OtherPunctuation => '!',
        UnicodeCategory.Format => '\u200B',
        UnicodeCategory.PrivateUse => '\uE000',
        _ => '\u0378',
    };
}

/// <summary>
/// What the decoder of a <c>tokenizer.json</c> does to token strings, reduced to per-token bytes: ByteLevel maps
/// <see cref="ByteLevelAlphabet"/> back to bytes; Replace, ByteFallback ("&lt;0xHH&gt;" is that byte), Fuse and
/// Strip, or Metaspace, turn SentencePiece-style pieces into text, dropping the leading space of the text.
/// </summary>
sealed record DecoderSteps(bool ByteLevel, string? ReplaceFrom, string? ReplaceTo, bool ByteFallback, int StripStart)
{
    public static DecoderSteps Parse(JsonElement element, string file, string field)
    {
        var steps = new DecoderSteps(false, null, null, false, 0);
        if (element.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return steps;
        return Add(steps, element, file, field);
    }

    static DecoderSteps Add(DecoderSteps steps, JsonElement element, string file, string field)
    {
        string type = TokenizerJsonFields.Type(element, file, field);
        switch (type)
        {
            case "Sequence":
                int i = 0;
                foreach (var step in TokenizerJsonFields.Array(element, "decoders", file, field))
                    steps = Add(steps, step, file, $"{field}.decoders[{i++}]");
                return steps;
            case "ByteLevel": return steps with { ByteLevel = true };
            case "ByteFallback": return steps with { ByteFallback = true };
            case "Fuse": return steps;
            case "Replace":
                if (!element.TryGetProperty("pattern", out var p) || !p.TryGetProperty("String", out var from) || from.ValueKind != JsonValueKind.String)
                    throw new InvalidInputException(file, $"{field}.pattern: only a {{\"String\": ...}} pattern is supported in a Replace decoder");
                return steps with { ReplaceFrom = from.GetString(), ReplaceTo = TokenizerJsonFields.String(element, "content", file, field) };
            case "Strip":
                string content = TokenizerJsonFields.String(element, "content", file, field);
                if (content != " ") throw new InvalidInputException(file, $"{field}.content: only \" \" can be stripped, not \"{content}\"");
                if (element.TryGetProperty("stop", out var stop) && stop.ValueKind == JsonValueKind.Number && stop.GetInt32() != 0)
                    throw new InvalidInputException(file, $"{field}.stop: stripping the end of the text is not supported");
                return steps with { StripStart = element.TryGetProperty("start", out var start) && start.ValueKind == JsonValueKind.Number ? start.GetInt32() : 0 };
            case "Metaspace":
                string replacement = TokenizerJsonFields.String(element, "replacement", file, field);
                string scheme = PreTokenizerStep.MetaspaceScheme(element, file, field);
                return steps with { ReplaceFrom = replacement, ReplaceTo = " ", StripStart = scheme == "never" ? 0 : 1 };
            default:
                throw new InvalidInputException(file, $"{field}: decoder type \"{type}\" is not supported (supported: Sequence, ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace)");
        }
    }
}

/// <summary>Reading the fields of a tokenizer.json step, with errors that name the file and the field.</summary>
static class TokenizerJsonFields
{
    public static string Type(JsonElement element, string file, string field) =>
        element.ValueKind == JsonValueKind.Object && element.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String
            ? t.GetString()! : throw new InvalidInputException(file, $"{field}: expected an object with a \"type\"");

    public static string String(JsonElement element, string name, string file, string field) =>
        element.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()!
            : throw new InvalidInputException(file, $"{field}.{name}: expected a string");

    public static bool Bool(JsonElement element, string name, string file, string field, bool absent) =>
        !element.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null ? absent
        : v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean()
        : throw new InvalidInputException(file, $"{field}.{name}: expected true or false");

    public static JsonElement.ArrayEnumerator Array(JsonElement element, string name, string file, string field) =>
        element.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Array ? v.EnumerateArray()
            : throw new InvalidInputException(file, $"{field}.{name}: expected an array");

    /// <summary>A pattern {"String": "..."} (literal) or {"Regex": "..."}.</summary>
    public static Regex Pattern(JsonElement element, string file, string field)
    {
        if (!element.TryGetProperty("pattern", out var p) || p.ValueKind != JsonValueKind.Object)
            throw new InvalidInputException(file, $"{field}.pattern: expected {{\"String\": ...}} or {{\"Regex\": ...}}");
        if (p.TryGetProperty("String", out var literal) && literal.ValueKind == JsonValueKind.String)
            return new Regex(Regex.Escape(literal.GetString()!), RegexOptions.CultureInvariant);
        if (p.TryGetProperty("Regex", out var regex) && regex.ValueKind == JsonValueKind.String)
        {
            try { return new Regex(regex.GetString()!, RegexOptions.CultureInvariant | RegexOptions.Compiled); }
            catch (ArgumentException e) { throw new InvalidInputException(file, $"{field}.pattern.Regex: not a regular expression .NET accepts ({e.Message})", e); }
        }
        throw new InvalidInputException(file, $"{field}.pattern: expected {{\"String\": ...}} or {{\"Regex\": ...}}");
    }
}
