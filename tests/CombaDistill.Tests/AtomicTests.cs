using CombaDistill.IO;
using CombaDistill.Tests.Support;

namespace CombaDistill.Tests;

public class AtomicTests
{
    [Fact]
    public void AtomicFile_replaces_whole_and_a_failed_write_keeps_the_old_file()
    {
        using var dir = new TempDir();
        var path = dir["notes.txt"];
        AtomicFile.WriteAllText(path, "first version, rather long");
        AtomicFile.WriteAllText(path, "second");
        Assert.Equal("second", File.ReadAllText(path));

        Assert.Throws<InvalidOperationException>(() => AtomicFile.Write(path, s =>
        {
            s.Write("half of the thi"u8);
            throw new InvalidOperationException("interrupted");
        }));
        Assert.Equal("second", File.ReadAllText(path));
        Assert.Equal([path], Directory.GetFileSystemEntries(dir.Path));

        AtomicFile.WriteAllBytes(dir["b.bin"], [1, 2, 3]);
        Assert.Equal([1, 2, 3], File.ReadAllBytes(dir["b.bin"]));
    }

    [Fact]
    public void AtomicFile_into_a_missing_folder_is_refused()
    {
        using var dir = new TempDir();
        var ex = Assert.Throws<InvalidInputException>(() => AtomicFile.WriteAllText(dir["no/such/x.txt"], "x"));
        Assert.Contains("does not exist", ex.Message);
    }

    [Fact]
    public void AtomicDirectory_appears_only_on_commit()
    {
        using var dir = new TempDir();
        var final = dir["student"];
        using (var staging = AtomicDirectory.Create(final, force: false))
        {
            Assert.Equal(dir.Path, Path.GetDirectoryName(staging.Path));
            Assert.StartsWith(".student.tmp-", Path.GetFileName(staging.Path));
            File.WriteAllText(Path.Combine(staging.Path, "config.json"), "{}");
            Assert.False(Directory.Exists(final));
            staging.Commit();
            Assert.False(Directory.Exists(staging.Path));
        }
        Assert.Equal("{}", File.ReadAllText(Path.Combine(final, "config.json")));
        Assert.Equal([final], Directory.GetFileSystemEntries(dir.Path));
    }

    [Fact]
    public void AtomicDirectory_disposed_without_commit_leaves_nothing_and_keeps_the_old_folder()
    {
        using var dir = new TempDir();
        var final = dir["student"];
        Directory.CreateDirectory(final);
        File.WriteAllText(Path.Combine(final, "old.txt"), "old");
        string temp;
        using (var staging = AtomicDirectory.Create(final, force: true))
        {
            temp = staging.Path;
            File.WriteAllText(Path.Combine(temp, "new.txt"), "new");
        }
        Assert.False(Directory.Exists(temp));
        Assert.Equal(["old.txt"], Directory.GetFiles(final).Select(f => Path.GetFileName(f)!).ToArray());
        Assert.Equal([final], Directory.GetFileSystemEntries(dir.Path));
    }

    [Fact]
    public void AtomicDirectory_refuses_an_existing_target_without_force_at_create_and_at_commit()
    {
        using var dir = new TempDir();
        var final = dir["out"];
        Directory.CreateDirectory(final);
        var ex = Assert.Throws<InvalidInputException>(() => AtomicDirectory.Create(final, force: false));
        Assert.Contains("out: exists; use --force", ex.Message);
        Assert.Equal([final], Directory.GetFileSystemEntries(dir.Path));

        var later = dir["later"];
        using var staging = AtomicDirectory.Create(later, force: false);
        Directory.CreateDirectory(later);  // someone else got there first
        var atCommit = Assert.Throws<InvalidInputException>(staging.Commit);
        Assert.Contains("exists; use --force", atCommit.Message);
    }

    [Fact]
    public void AtomicDirectory_with_force_replaces_the_old_folder_entirely()
    {
        using var dir = new TempDir();
        var final = dir["out"];
        Directory.CreateDirectory(final);
        File.WriteAllText(Path.Combine(final, "stale.txt"), "stale");
        using (var staging = AtomicDirectory.Create(final, force: true))
        {
            File.WriteAllText(Path.Combine(staging.Path, "fresh.txt"), "fresh");
            staging.Commit();
        }
        Assert.Equal(["fresh.txt"], Directory.GetFiles(final).Select(f => Path.GetFileName(f)!).ToArray());
        Assert.Equal([final], Directory.GetFileSystemEntries(dir.Path));
    }
}
