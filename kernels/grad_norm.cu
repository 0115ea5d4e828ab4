// The sum of squares of many float32 tensors in one launch, added up per group (a clip group: the whole model, or
// one decoder layer in attention alignment), where taking each gradient's norm costs a launch or two per tensor and
// the host's time to issue them (hundreds of tensors a step). The tensors are laid end to end in one index space:
// tensor i holds elements [starts[i], starts[i + 1]). Each block takes perBlock consecutive elements of that space,
// finds the tensor its first element falls in by binary search, and for each tensor its range touches adds the
// squares in float64, reduces them over the block and adds the result atomically into sums[groups[i]] (float64,
// zeroed by the caller). Loop bounds are the same for every thread of a block, so the barriers inside are safe.

extern "C" __global__ void group_sum_squares(const unsigned long long* __restrict__ pointers, const long long* __restrict__ starts,
                                             const long long* __restrict__ groups, int tensors, long long perBlock,
                                             double* __restrict__ sums)
{
    __shared__ double partial[32];
    const long long total = starts[tensors];
    const long long begin = (long long)blockIdx.x * perBlock;
    const long long end = min(begin + perBlock, total);
    if (begin >= end) return;
    int lo = 0, hi = tensors - 1;           // the last tensor that starts at or before begin
    while (lo < hi)
    {
        const int mid = (lo + hi + 1) >> 1;
        if (starts[mid] <= begin) lo = mid; else hi = mid - 1;
    }
    for (int i = lo; i < tensors && starts[i] < end; i++)
    {
        const long long a = max(begin, starts[i]), b = min(end, starts[i + 1]);
        if (a >= b) continue;               // an empty tensor (the same for every thread)
        const float* p = (const float*)pointers[i];
        double s = 0;
        for (long long e = a - starts[i] + threadIdx.x; e < b - starts[i]; e += blockDim.x)
        {
            const double v = p[e];
            s += v * v;
        }
        for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
        if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = s;
        __syncthreads();
        if (threadIdx.x < 32)
        {
            double t = threadIdx.x < (blockDim.x >> 5) ? partial[threadIdx.x] : 0.0;
            for (int o = 16; o > 0; o >>= 1) t += __shfl_down_sync(0xffffffffu, t, o);
            if (threadIdx.x == 0) atomicAdd(&sums[groups[i]], t);
        }
        __syncthreads();
    }
}
