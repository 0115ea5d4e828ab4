using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using static TorchSharp.torch;

namespace CombaDistill.Runtime.Parallel;

/// <summary>
/// CPU processes of one host reducing over loopback TCP, for data parallelism without GPUs (and for testing the
/// trainer's parallel path anywhere). A star: every rank connects to rank 0, which adds the contributions in rank
/// order (so every rank gets bit-identical results), divides for an average, and sends the result back. Each
/// collective starts with a header naming the operation, dtype and size, so ranks that disagree fail with a message
/// rather than exchanging garbage. A peer that exits closes its socket, which fails the others' next collective at
/// once; a peer that hangs fails them after <see cref="Timeout"/>.
/// </summary>
public sealed class TcpProcessGroup : ProcessGroup
{
    const string PortFile = "tcp-port";
    const int Magic = 0x434F4D42;    // "COMB"
    const int HeaderBytes = 24;
    enum Kind { AllReduce = 1, Broadcast = 2 }

    readonly int rank, worldSize;
    /// <summary>On rank 0, the socket to each rank (index 0 unused); elsewhere one socket, to rank 0, at index 0.</summary>
    readonly Socket?[] peers;

    TcpProcessGroup(int rank, int worldSize, Socket?[] peers, TimeSpan timeout)
    {
        this.rank = rank;
        this.worldSize = worldSize;
        this.peers = peers;
        Timeout = timeout;
    }

    public override int Rank => rank;
    public override int WorldSize => worldSize;
    public override Device Device => CPU;

    /// <summary>How long a collective waits for a peer's data (at first the rendezvous timeout).</summary>
    public TimeSpan Timeout
    {
        get;
        set
        {
            field = value;
            foreach (var socket in peers.OfType<Socket>())
                socket.ReceiveTimeout = socket.SendTimeout = (int)Math.Min(int.MaxValue, value.TotalMilliseconds);
        }
    }

    /// <summary>
    /// Rank 0 listens on a loopback port and publishes it in the rendezvous folder; the others connect and introduce
    /// themselves. Returns once all <paramref name="worldSize"/> ranks are connected.
    /// </summary>
    public static TcpProcessGroup Connect(int rank, int worldSize, Rendezvous rendezvous)
    {
        if (worldSize < 1 || rank < 0 || rank >= worldSize) throw new ArgumentOutOfRangeException(nameof(rank), $"rank {rank} of {worldSize}");
        var timeout = rendezvous.Timeout;
        var peers = new Socket?[rank == 0 ? worldSize : 1];
        try
        {
            if (rank == 0) AcceptAll(peers, worldSize, rendezvous);
            else peers[0] = ConnectToRoot(rank, worldSize, rendezvous);
            foreach (var socket in peers.OfType<Socket>()) socket.NoDelay = true;
            return new TcpProcessGroup(rank, worldSize, peers, timeout);
        }
        catch
        {
            foreach (var socket in peers) socket?.Dispose();
            throw;
        }
    }

    static void AcceptAll(Socket?[] peers, int worldSize, Rendezvous rendezvous)
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(worldSize);
        rendezvous.Publish(PortFile, Encoding.ASCII.GetBytes(((IPEndPoint)listener.LocalEndPoint!).Port.ToString()));
        var clock = Stopwatch.StartNew();
        Span<byte> hello = stackalloc byte[12];
        for (var joined = 1; joined < worldSize;)
        {
            var left = rendezvous.Timeout - clock.Elapsed;
            if (left <= TimeSpan.Zero || !listener.Poll(left, SelectMode.SelectRead))
                throw new ProcessGroupException($"rank 0 waited {rendezvous.Timeout.TotalSeconds:F0} s for {worldSize - joined} of {worldSize - 1} ranks to connect");
            var socket = listener.Accept();
            socket.ReceiveTimeout = (int)Math.Max(1, left.TotalMilliseconds);
            ReceiveExactly(socket, hello, 0, -1);
            var (magic, peer, peerWorld) = (BinaryPrimitives.ReadInt32LittleEndian(hello), BinaryPrimitives.ReadInt32LittleEndian(hello[4..]), BinaryPrimitives.ReadInt32LittleEndian(hello[8..]));
            if (magic != Magic || peerWorld != worldSize || peer <= 0 || peer >= worldSize || peers[peer] is not null)
            {
                socket.Dispose();
                throw new ProcessGroupException($"rank 0 got a connection introducing itself as rank {peer} of {peerWorld} (this job has {worldSize} ranks; another job on the same rendezvous folder?)");
            }
            peers[peer] = socket;
            joined++;
        }
    }

    static Socket ConnectToRoot(int rank, int worldSize, Rendezvous rendezvous)
    {
        var port = int.Parse(Encoding.ASCII.GetString(rendezvous.Await(PortFile, rank)));
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.Connect(new IPEndPoint(IPAddress.Loopback, port));
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new ProcessGroupException($"rank {rank} cannot connect to rank 0 on port {port}: {e.Message}", e);
        }
        Span<byte> hello = stackalloc byte[12];
        BinaryPrimitives.WriteInt32LittleEndian(hello, Magic);
        BinaryPrimitives.WriteInt32LittleEndian(hello[4..], rank);
        BinaryPrimitives.WriteInt32LittleEndian(hello[8..], worldSize);
        socket.Send(hello);
        return socket;
    }

    public override void AllReduce(Tensor tensor, ReduceOp op)
    {
        var data = Check(tensor);
        Span<byte> header = stackalloc byte[HeaderBytes];
        WriteHeader(header, Kind.AllReduce, tensor, (int)op);
        if (rank != 0)
        {
            Send(peers[0]!, header, 0);
            Send(peers[0]!, data, 0);
            Receive(peers[0]!, data, 0);
            return;
        }
        using (var scratch = empty_like(tensor))
        {
            var received = TensorMemory.Bytes(scratch);
            for (var peer = 1; peer < worldSize; peer++)
            {
                ExpectHeader(peer, header);
                Receive(peers[peer]!, received, peer);
                tensor.add_(scratch);
            }
        }
        if (op == ReduceOp.Average) tensor.div_(worldSize);
        for (var peer = 1; peer < worldSize; peer++) Send(peers[peer]!, data, peer);
    }

    public override void Broadcast(Tensor tensor, int root)
    {
        if (root < 0 || root >= worldSize) throw new ArgumentOutOfRangeException(nameof(root), $"rank {root} of {worldSize}");
        var data = Check(tensor);
        Span<byte> header = stackalloc byte[HeaderBytes];
        WriteHeader(header, Kind.Broadcast, tensor, root);
        if (rank != 0)
        {
            Send(peers[0]!, header, 0);
            if (rank == root) Send(peers[0]!, data, 0);
            else Receive(peers[0]!, data, 0);
            return;
        }
        for (var peer = 1; peer < worldSize; peer++) ExpectHeader(peer, header);
        if (root != 0) Receive(peers[root]!, data, root);
        for (var peer = 1; peer < worldSize; peer++)
            if (peer != root) Send(peers[peer]!, data, peer);
    }

    public override void Dispose()
    {
        foreach (var socket in peers) socket?.Dispose();
        base.Dispose();
    }

    static Span<byte> Check(Tensor tensor)
    {
        if (tensor.device_type != TorchSharp.DeviceType.CPU) throw new ArgumentException($"a TCP process group reduces CPU tensors, not {tensor.device} ones");
        if (tensor.dtype is not (ScalarType.Float32 or ScalarType.Float64 or ScalarType.Int64))
            throw new ArgumentException($"a TCP process group reduces float32, float64 or int64 tensors, not {tensor.dtype}");
        return TensorMemory.Bytes(tensor);
    }

    static void WriteHeader(Span<byte> header, Kind kind, Tensor tensor, int argument)
    {
        BinaryPrimitives.WriteInt32LittleEndian(header, Magic);
        BinaryPrimitives.WriteInt32LittleEndian(header[4..], (int)kind);
        BinaryPrimitives.WriteInt32LittleEndian(header[8..], (int)tensor.dtype);
        BinaryPrimitives.WriteInt32LittleEndian(header[12..], argument);
        BinaryPrimitives.WriteInt64LittleEndian(header[16..], tensor.numel());
    }

    static string Describe(ReadOnlySpan<byte> header)
    {
        var kind = (Kind)BinaryPrimitives.ReadInt32LittleEndian(header[4..]);
        var argument = BinaryPrimitives.ReadInt32LittleEndian(header[12..]);
        return $"{(kind == Kind.AllReduce ? $"all-reduce ({(ReduceOp)argument})" : $"broadcast from rank {argument}")} of " +
            $"{BinaryPrimitives.ReadInt64LittleEndian(header[16..])} {(ScalarType)BinaryPrimitives.ReadInt32LittleEndian(header[8..])}";
    }

    void ExpectHeader(int peer, ReadOnlySpan<byte> own)
    {
        Span<byte> theirs = stackalloc byte[HeaderBytes];
        Receive(peers[peer]!, theirs, peer);
        if (!theirs.SequenceEqual(own))
            throw new ProcessGroupException($"ranks disagree on the collective: rank 0 called {Describe(own)}, rank {peer} {Describe(theirs)}");
    }

    void Send(Socket socket, ReadOnlySpan<byte> bytes, int peer)
    {
        try
        {
            while (bytes.Length > 0) bytes = bytes[socket.Send(bytes)..];
        }
        catch (SocketException e)
        {
            throw Failure(e, peer);
        }
    }

    void Receive(Socket socket, Span<byte> bytes, int peer)
    {
        try
        {
            ReceiveExactly(socket, bytes, rank, peer);
        }
        catch (SocketException e)
        {
            throw Failure(e, peer);
        }
    }

    static void ReceiveExactly(Socket socket, Span<byte> bytes, int rank, int peer)
    {
        while (bytes.Length > 0)
        {
            var n = socket.Receive(bytes);
            if (n == 0) throw new ProcessGroupException($"rank {Name(peer)} closed its connection to rank {rank}: it stopped or failed (see its output)");
            bytes = bytes[n..];
        }
    }

    ProcessGroupException Failure(SocketException e, int peer) => e.SocketErrorCode == SocketError.TimedOut
        ? new ProcessGroupException($"rank {rank} heard nothing from rank {Name(peer)} for {Timeout.TotalSeconds:F0} s; is it stuck?", e)
        : new ProcessGroupException($"rank {rank} lost its connection to rank {Name(peer)} ({e.SocketErrorCode}): it stopped or failed (see its output)", e);

    static string Name(int peer) => peer < 0 ? "?" : peer.ToString();
}
