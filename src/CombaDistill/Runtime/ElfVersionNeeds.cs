using System.Buffers.Binary;
using System.Text;

namespace CombaDistill.Runtime;

/// <summary>One symbol-version requirement of a shared library (an Elf64_Vernaux entry).</summary>
public sealed record VersionNeed(string Library, string Version, bool Weak);

/// <summary>Reads the .gnu.version_r section of an ELF64 shared library, for load diagnostics.</summary>
public static class ElfVersionNeeds
{
    const uint ShtGnuVerneed = 0x6ffffffe;
    const ushort VerFlgWeak = 0x2;

    public static IReadOnlyList<VersionNeed> Read(string path)
    {
        var elf = File.ReadAllBytes(path);
        if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != 'E' || elf[2] != 'L' || elf[3] != 'F' || elf[4] != 2 || elf[5] != 1)
            throw new InvalidDataException($"{path}: not a little-endian ELF64 file");
        var s = elf.AsSpan();
        long shoff = BinaryPrimitives.ReadInt64LittleEndian(s[0x28..]);
        int shentsize = BinaryPrimitives.ReadUInt16LittleEndian(s[0x3A..]);
        int shnum = BinaryPrimitives.ReadUInt16LittleEndian(s[0x3C..]);
        var result = new List<VersionNeed>();
        for (int i = 0; i < shnum; i++)
        {
            var sh = s[(int)(shoff + (long)i * shentsize)..];
            if (BinaryPrimitives.ReadUInt32LittleEndian(sh[4..]) != ShtGnuVerneed) continue;
            int off = (int)BinaryPrimitives.ReadInt64LittleEndian(sh[0x18..]);
            int link = (int)BinaryPrimitives.ReadUInt32LittleEndian(sh[0x28..]);
            int str = (int)BinaryPrimitives.ReadInt64LittleEndian(s[(int)(shoff + (long)link * shentsize + 0x18)..]);
            for (int need = off; ;)
            {
                int cnt = BinaryPrimitives.ReadUInt16LittleEndian(s[(need + 2)..]);
                var file = CString(s, str + (int)BinaryPrimitives.ReadUInt32LittleEndian(s[(need + 4)..]));
                int aux = need + (int)BinaryPrimitives.ReadUInt32LittleEndian(s[(need + 8)..]);
                for (int a = 0; a < cnt; a++)
                {
                    var flags = BinaryPrimitives.ReadUInt16LittleEndian(s[(aux + 4)..]);
                    var name = CString(s, str + (int)BinaryPrimitives.ReadUInt32LittleEndian(s[(aux + 8)..]));
                    result.Add(new VersionNeed(file, name, (flags & VerFlgWeak) != 0));
                    aux += (int)BinaryPrimitives.ReadUInt32LittleEndian(s[(aux + 12)..]);
                }
                var next = BinaryPrimitives.ReadUInt32LittleEndian(s[(need + 12)..]);
                if (next == 0) break;
                need += (int)next;
            }
        }
        return result;
    }

    static string CString(ReadOnlySpan<byte> s, int at)
    {
        var end = s[at..].IndexOf((byte)0);
        return Encoding.ASCII.GetString(s.Slice(at, end));
    }
}
