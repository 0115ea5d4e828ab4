// Reproduces the TorchSharp 0.107 race that src/CombaDistill/Runtime/CollectionPause.cs keeps out of training steps.
//
//   dotnet build tools/ScalarRace -c Release
//   DOTNET_GCgen0size=0x100000 dotnet tools/ScalarRace/bin/Release/net10.0/ScalarRace.dll SECONDS [pause]
//
// The main thread runs tiny libtorch ops that take an implicit Scalar (x.mul(2.5), y.add(0.5)) and checks each
// result; another thread only allocates, and the small gen-0 budget makes those allocations collect thousands of
// times a second. A collection that lands between TorchSharp reading the Scalar's handle and libtorch copying the
// value lets the finalizer free it first: libtorch reports "Expected false to be true" or "Unknown scalar type", or
// computes with a wrong number. With "pause", each block of 1000 ops runs inside CollectionPause (a no-GC region).
// Exit code 1 when any op failed.
using CombaDistill.Runtime;
using static TorchSharp.torch;

TorchRuntime.Initialize();
set_num_threads(1);
var seconds = args.Length > 0 ? double.Parse(args[0], System.Globalization.CultureInfo.InvariantCulture) : 30;
var pause = args.Length > 1 && args[1] == "pause";
var stop = false;
var noise = new Thread(() =>
{
    // allocation, as a progress bar or a logger does; run with DOTNET_GCgen0size=0x100000 so it collects often
    while (!Volatile.Read(ref stop)) GC.KeepAlive(new byte[4096]);
}) { IsBackground = true };
noise.Start();

var x = ones(4);
long ops = 0, failures = 0;
var clock = System.Diagnostics.Stopwatch.StartNew();
while (clock.Elapsed.TotalSeconds < seconds)
{
    using var region = pause ? CollectionPause.Start() : default;
    try
    {
        for (var i = 0; i < 1000; i++)
        {
            using var y = x.mul(2.5);
            using var z = y.add(0.5);
            ops++;
            if (z[0].item<float>() != 3f) failures++;
        }
    }
    catch (Exception e)
    {
        if (++failures <= 3) Console.WriteLine(e.Message.Split('\n')[0]);
    }
}
Volatile.Write(ref stop, true);
Console.WriteLine($"{(pause ? "with CollectionPause" : "without")}: {ops:N0} scalar ops in {seconds} s, {failures} failures, {GC.CollectionCount(0):N0} gen-0 collections");
return failures == 0 ? 0 : 1;
