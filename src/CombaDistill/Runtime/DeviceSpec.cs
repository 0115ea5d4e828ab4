using TorchSharp;

namespace CombaDistill.Runtime;

/// <summary>Parses <c>--device auto|cpu|cuda|cuda:N</c>.</summary>
public static class DeviceSpec
{
    public static torch.Device Resolve(string? spec)
    {
        TorchRuntime.Initialize();
        var s = (spec ?? "auto").Trim().ToLowerInvariant();
        switch (s)
        {
            case "auto":
                return torch.cuda.is_available() ? torch.CUDA : torch.CPU;
            case "cpu":
                return torch.CPU;
        }
        if (s == "cuda" || s.StartsWith("cuda:", StringComparison.Ordinal))
        {
            if (!torch.cuda.is_available())
                throw new ArgumentException($"--device {spec}: CUDA is not available (set {TorchRuntime.LibTorchEnvironmentVariable} to a CUDA PyTorch's torch/lib, or use --device cpu)");
            if (s == "cuda") return torch.CUDA;
            if (!int.TryParse(s.AsSpan(5), out var index) || index < 0 || index >= torch.cuda.device_count())
                throw new ArgumentException($"--device {spec}: no such CUDA device (this machine has {torch.cuda.device_count()})");
            return new torch.Device(DeviceType.CUDA, index);
        }
        throw new ArgumentException($"--device {spec}: expected auto, cpu, cuda or cuda:N");
    }
}
