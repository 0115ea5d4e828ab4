using static TorchSharp.torch;

namespace CombaDistill.IO;

/// <summary>One file of named tensors that a <see cref="Checkpoint"/> reads from: a .safetensors file or a pytorch_model.bin.</summary>
public interface ITensorFile : IDisposable
{
    string Path { get; }
    IReadOnlyDictionary<string, TensorInfo> Tensors { get; }
    IReadOnlyDictionary<string, string> Metadata { get; }
    bool Contains(string name);
    Tensor Read(string name, ScalarType? dtype = null, Device? device = null);
}
