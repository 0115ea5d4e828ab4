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
        WriteModelFolder(final);
        File.WriteAllText(Path.Combine(final, "old.txt"), "old");
        string temp;
        using (var staging = AtomicDirectory.Create(final, force: true))
        {
            temp = staging.Path;
            File.WriteAllText(Path.Combine(temp, "new.txt"), "new");
        }
        Assert.False(Directory.Exists(temp));
        Assert.Equal(["config.json", "model.safetensors", "old.txt"], Directory.GetFiles(final).Select(f => Path.GetFileName(f)!).Order(StringComparer.Ordinal).ToArray());
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
        WriteModelFolder(final);
        File.WriteAllText(Path.Combine(final, "stale.txt"), "stale");
        using (var staging = AtomicDirectory.Create(final, force: true))
        {
            File.WriteAllText(Path.Combine(staging.Path, "fresh.txt"), "fresh");
            staging.Commit();
        }
        Assert.Equal(["fresh.txt"], Directory.GetFiles(final).Select(f => Path.GetFileName(f)!).ToArray());
        Assert.Equal([final], Directory.GetFileSystemEntries(dir.Path));
    }

    /// <summary>The two files that make a folder a model folder, which --force may replace.</summary>
    static void WriteModelFolder(string folder)
    {
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "config.json"), "{}");
        File.WriteAllText(Path.Combine(folder, "model.safetensors"), "weights");
    }

    [Fact]
    public void Force_refuses_a_file_or_a_folder_that_is_not_a_model_folder_and_leaves_it_as_it_was()
    {
        using var dir = new TempDir();
        var notes = dir["notes.txt"];
        File.WriteAllText(notes, "my notes");
        var file = Assert.Throws<InvalidInputException>(() => AtomicDirectory.Create(notes, force: true));
        Assert.Equal($"{notes}: is a file, not a model folder; --force replaces only a model folder (config.json and safetensors weights) or an empty folder", file.Message);
        // without --force the message does not suggest --force, which would not help
        var plain = Assert.Throws<InvalidInputException>(() => AtomicDirectory.Create(notes, force: false));
        Assert.Contains("exists and is a file, not a model folder", plain.Message);
        Assert.DoesNotContain("use --force", plain.Message);
        Assert.Equal("my notes", File.ReadAllText(notes));

        var mine = dir["mydir"];
        Directory.CreateDirectory(mine);
        File.WriteAllText(Path.Combine(mine, "keep.txt"), "keep");
        Assert.Contains("is not a model folder (no config.json)", Assert.Throws<InvalidInputException>(() => AtomicDirectory.Create(mine, force: true)).Message);
        // config.json alone is a common name, not proof of a model folder
        File.WriteAllText(Path.Combine(mine, "config.json"), "{}");
        Assert.Contains("holds config.json but no model.safetensors", Assert.Throws<InvalidInputException>(() => AtomicDirectory.Create(mine, force: true)).Message);
        Assert.Equal("keep", File.ReadAllText(Path.Combine(mine, "keep.txt")));

        // a link to a model folder: the replace would swap the link, not the folder it points to
        var model = dir["model"];
        WriteModelFolder(model);
        var link = dir["link"];
        Directory.CreateSymbolicLink(link, model);
        Assert.Contains("is a symbolic link", Assert.Throws<InvalidInputException>(() => AtomicDirectory.Create(link, force: true)).Message);
        Assert.True(File.Exists(Path.Combine(link, "config.json")));
        Assert.Equal(new[] { link, model, mine, notes }.Order(StringComparer.Ordinal), Directory.GetFileSystemEntries(dir.Path).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void Force_replaces_an_empty_folder_and_rechecks_at_commit_what_appeared_meanwhile()
    {
        using var dir = new TempDir();
        var empty = dir["empty"];
        Directory.CreateDirectory(empty);
        using (var staging = AtomicDirectory.Create(empty, force: true))
        {
            WriteModelFolder(staging.Path);
            staging.Commit();
        }
        Assert.True(File.Exists(Path.Combine(empty, "config.json")));

        // the target was free at Create; a user's file written there during a long job is not deleted at Commit
        var later = dir["later"];
        using var late = AtomicDirectory.Create(later, force: true);
        WriteModelFolder(late.Path);
        File.WriteAllText(later, "written meanwhile");
        Assert.Contains("is a file, not a model folder", Assert.Throws<InvalidInputException>(late.Commit).Message);
        Assert.Equal("written meanwhile", File.ReadAllText(later));
    }

    [Fact]
    public void A_folder_the_caller_owns_is_replaced_whatever_it_holds()
    {
        using var dir = new TempDir();
        var step = dir["step-00000010"];                       // a checkpoint: weights and state, no config.json
        Directory.CreateDirectory(step);
        File.WriteAllText(Path.Combine(step, "state.json"), "old");
        using (var staging = AtomicDirectory.CreateReplacingOwn(step))
        {
            File.WriteAllText(Path.Combine(staging.Path, "state.json"), "new");
            staging.Commit();
        }
        Assert.Equal("new", File.ReadAllText(Path.Combine(step, "state.json")));
        Assert.Equal([step], Directory.GetFileSystemEntries(dir.Path));
    }

    /// <summary>What a process killed while building NAME leaves: the temporary folder and its lock file, no longer locked.</summary>
    static string LeftoverOfAKilledProcess(string final, string tag = "tmp", string id = "deadbeef")
    {
        var parent = Path.GetDirectoryName(final)!;
        var name = Path.GetFileName(final);
        var folder = Path.Combine(parent, $".{name}.{tag}-{id}");
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "model.safetensors"), "half");
        File.WriteAllText(Path.Combine(parent, $".{name}.tmp-{id}.lock"), "12345\n");
        return folder;
    }

    [Fact]
    public void AtomicDirectory_removes_the_leftovers_of_a_dead_process_but_not_of_a_live_one()
    {
        using var dir = new TempDir();
        var final = dir["student"];
        var dead = LeftoverOfAKilledProcess(final);
        var orphan = dir[".student.tmp-0badf00d"];                   // a temporary folder with no lock at all
        Directory.CreateDirectory(orphan);
        var other = LeftoverOfAKilledProcess(dir["teacher"]);        // another target's leftovers are not this one's to judge

        using var live = AtomicDirectory.Create(final, force: false);   // holds its lock
        Assert.False(Directory.Exists(dead));
        Assert.False(File.Exists(dead + ".lock"));
        Assert.False(Directory.Exists(orphan));
        Assert.True(Directory.Exists(other));

        // a second job for the same target while the first runs leaves the first one's folder alone
        using (var second = AtomicDirectory.Create(final, force: false))
        {
            Assert.True(Directory.Exists(live.Path));
            Assert.True(File.Exists(live.Path + ".lock"));
        }
        Assert.True(Directory.Exists(live.Path));
        live.Commit();
        Assert.Equal(new[] { final, other, Path.Combine(dir.Path, ".teacher.tmp-deadbeef.lock") }.Order(StringComparer.Ordinal), Directory.GetFileSystemEntries(dir.Path).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void A_replace_killed_between_its_two_renames_is_put_back_by_the_next_one()
    {
        using var dir = new TempDir();
        var final = dir["out"];
        // killed after the old folder stepped aside and before the new one moved in: no "out" at all
        var old = LeftoverOfAKilledProcess(final, tag: "old", id: "cafe0001");
        File.WriteAllText(Path.Combine(old, "config.json"), "the old model");
        var half = LeftoverOfAKilledProcess(final, tag: "tmp", id: "cafe0001");

        AtomicDirectory.Recover(final);
        Assert.Equal("the old model", File.ReadAllText(Path.Combine(final, "config.json")));
        Assert.Equal([final], Directory.GetFileSystemEntries(dir.Path));
        Assert.False(Directory.Exists(half));

        // without --force the restored folder is refused again, as the old one would have been
        Assert.Throws<InvalidInputException>(() => AtomicDirectory.Create(final, force: false));
    }

    [Fact]
    public void A_stepped_aside_folder_is_dropped_once_the_new_one_is_in_place()
    {
        using var dir = new TempDir();
        var final = dir["out"];
        Directory.CreateDirectory(final);
        File.WriteAllText(Path.Combine(final, "config.json"), "the new model");
        LeftoverOfAKilledProcess(final, tag: "old", id: "cafe0002");   // killed after the second rename, before the clean-up
        AtomicDirectory.Recover(final);
        Assert.Equal("the new model", File.ReadAllText(Path.Combine(final, "config.json")));
        Assert.Equal([final], Directory.GetFileSystemEntries(dir.Path));
    }

    [Fact]
    public void A_forced_replace_swaps_in_one_step_and_leaves_no_sibling()
    {
        using var dir = new TempDir();
        var final = dir["out"];
        WriteModelFolder(final);
        File.WriteAllText(Path.Combine(final, "v.txt"), "1");
        for (var version = 2; version <= 4; version++)
        {
            using var staging = AtomicDirectory.Create(final, force: true);
            WriteModelFolder(staging.Path);
            File.WriteAllText(Path.Combine(staging.Path, "v.txt"), $"{version}");
            staging.Commit();
            Assert.Equal($"{version}", File.ReadAllText(Path.Combine(final, "v.txt")));
            Assert.Equal([final], Directory.GetFileSystemEntries(dir.Path));
        }
    }

    [Fact]
    public void AtomicFile_removes_a_killed_writers_temporary_but_not_a_live_ones()
    {
        using var dir = new TempDir();
        var path = dir["train.tokens"];
        var dead = dir[".train.tokens.tmp-deadbeef"];
        File.WriteAllText(dead, "half of the ids");              // a killed writer's: nobody holds it
        var live = dir[".train.tokens.tmp-0000a11e"];
        using (var writer = new FileStream(live, FileMode.CreateNew, FileAccess.Write, FileShare.None))   // as a live writer holds it
        {
            AtomicFile.WriteAllText(path, "ids");
            Assert.False(File.Exists(dead));
            Assert.True(File.Exists(live));
        }
        Assert.Equal("ids", File.ReadAllText(path));
    }

    [Fact]
    public void RecoverAll_cleans_every_target_in_a_folder_and_leaves_file_temporaries_to_AtomicFile()
    {
        using var dir = new TempDir();
        var step4 = LeftoverOfAKilledProcess(dir["step-00000004"]);
        var step6 = LeftoverOfAKilledProcess(dir["step-00000006"], id: "0000beef");
        var fileTemp = dir[".notes.txt.tmp-12345678"];
        File.WriteAllText(fileTemp, "x");
        AtomicDirectory.RecoverAll(dir.Path);
        Assert.False(Directory.Exists(step4));
        Assert.False(Directory.Exists(step6));
        Assert.Equal([fileTemp], Directory.GetFileSystemEntries(dir.Path));
    }
}
