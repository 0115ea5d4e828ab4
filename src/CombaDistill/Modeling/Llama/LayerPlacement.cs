using static TorchSharp.torch;

namespace CombaDistill.Modeling.Llama;

/// <summary>
/// Where the parts of a model split by layer live, for a teacher that does not fit on one GPU: the embeddings, final
/// norm and head on <see cref="Home"/> (where its inputs come from and its outputs are used), decoder layer i on
/// <see cref="Devices"/>[<see cref="LayerSlots"/>[i]]. The hidden states cross a device boundary once per change of
/// device in a forward pass (a few MB), and come back to <see cref="Home"/> before the final norm.
/// </summary>
public sealed record LayerPlacement(Device Home, IReadOnlyList<Device> Devices, IReadOnlyList<int> LayerSlots)
{
    public static LayerPlacement OnOneDevice(int layers, Device device) => new(device, [device], new int[layers]);

    /// <summary>
    /// Contiguous runs of layers, as equal in number as they can be, in the order of <paramref name="devices"/>; when
    /// they cannot be equal the later devices take one more, since the first is usually <paramref name="home"/> and
    /// also holds the embeddings, the head and the student.
    /// </summary>
    public static LayerPlacement Balanced(int layers, Device home, IReadOnlyList<Device> devices)
    {
        if (devices.Count == 0) throw new ArgumentException("no device to place layers on", nameof(devices));
        if (layers < 0) throw new ArgumentOutOfRangeException(nameof(layers));
        var k = devices.Count;
        var slots = Enumerable.Range(0, layers).Select(i => k - 1 - (int)((long)(layers - 1 - i) * k / layers)).ToArray();
        return new LayerPlacement(home, devices.ToArray(), slots);
    }

    public Device LayerDevice(int layer) => Devices[LayerSlots[layer]];

    /// <summary>True when the layers are placed over several devices, or away from <see cref="Home"/>: hidden states are moved (a no-op where a device is listed twice).</summary>
    public bool IsSplit => Devices.Count > 1 || !Same(Devices[0], Home);

    /// <summary>e.g. "layers 0–6 on cuda:0, 7–15 on cuda:1; embeddings and head on cuda:0".</summary>
    public string Describe()
    {
        var runs = new List<string>();
        for (var start = 0; start < LayerSlots.Count;)
        {
            var end = start;
            while (end + 1 < LayerSlots.Count && LayerSlots[end + 1] == LayerSlots[start]) end++;
            runs.Add($"{(start == end ? $"{start}" : $"{start}–{end}")} on {Devices[LayerSlots[start]]}");
            start = end + 1;
        }
        return $"layers {string.Join(", ", runs)}; embeddings and head on {Home}";
    }

    static bool Same(Device a, Device b) => a.type == b.type && Math.Max(a.index, 0) == Math.Max(b.index, 0);
}
