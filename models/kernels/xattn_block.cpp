// Fused stacked-cross-attention scores of one block of (context owner, query owner) pairs, for
// CPU inference. Everything after the block matmul runs in one pass per pair, in registers:
// the raw normalisation, the attention softmax, the attended context's norm through the
// context Gram matrix (||sum_k a_k c_k||^2 = a^T G a) and the aggregation over queries.
// Built and loaded by models/fused.py; models/scan.py holds the same computation in PyTorch.
#include <torch/library.h>
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

constexpr float kEps = 1e-8f;  // the reference's eps for norms and cosine similarity
constexpr int64_t V = 16;      // lanes: contexts are handled in zero-padded groups of V
constexpr int64_t kMaxGroups = 8;
typedef float Vec __attribute__((vector_size(V * sizeof(float))));
typedef float Half __attribute__((vector_size(V / 2 * sizeof(float))));
typedef float Quarter __attribute__((vector_size(V / 4 * sizeof(float))));

// Same order as models.config.RAW_FEATURE_NORMS and AGG_FUNCS (models/fused.py passes indices).
enum RawNorm : int64_t { kClippedL2, kL2, kSoftmax, kClipped, kNoNorm, kL1, kClippedL1 };
enum Agg : int64_t { kMean, kLogSumExp, kMax, kSum };

struct Options {
  int64_t raw_norm, agg;
  float lambda_softmax, lambda_lse;
  bool clipped, l2;
};

inline Vec load(const float* p) { Vec v; std::memcpy(&v, p, sizeof(Vec)); return v; }
inline Vec splat(float x) { return Vec{} + x; }
inline Vec vmax(Vec a, Vec b) { return a > b ? a : b; }
inline Vec vexp(Vec v) {  // a lane loop that the compiler turns into one vector exp call
  float lanes[V];
  std::memcpy(lanes, &v, sizeof(Vec));
  for (int64_t l = 0; l < V; ++l) lanes[l] = std::exp(lanes[l]);
  return load(lanes);
}

template <typename Op> inline float reduce(Vec v, Op op) {  // halving tree, not 16 dependent steps
  Half h0, h1;
  std::memcpy(&h0, &v, sizeof(Half));
  std::memcpy(&h1, reinterpret_cast<const char*>(&v) + sizeof(Half), sizeof(Half));
  const Half h = op(h0, h1);
  Quarter q0, q1;
  std::memcpy(&q0, &h, sizeof(Quarter));
  std::memcpy(&q1, reinterpret_cast<const char*>(&h) + sizeof(Quarter), sizeof(Quarter));
  const Quarter q = op(q0, q1);
  return op(op(q[0], q[1]), op(q[2], q[3]));
}
inline float hsum(Vec v) { return reduce(v, [](auto a, auto b) { return a + b; }); }
inline float hmax(Vec v) { return reduce(v, [](auto a, auto b) { return a > b ? a : b; }); }

// One pair. rows[q] points at the K similarities of query q with every context; G is the
// context Gram matrix (K, Kp) with zero-padded columns; NC = Kp / V is fixed at compile time so
// each per-query vector stays in registers. tile holds Q * Kp floats, cosines Q floats.
template <int NC>
float score_pair(const float* const* rows, int64_t Q, int64_t K, const float* G, const bool* context_mask,
                 const float* query_sq, const Options& o, float* tile, float* cosines) {
  constexpr int64_t Kp = NC * V;
  Vec live[NC], f[NC], z[NC];
  for (int c = 0; c < NC; ++c)
    for (int64_t l = 0; l < V; ++l) {
      const int64_t k = c * V + l;
      live[c][l] = k < K && (!context_mask || context_mask[k]) ? 1.f : 0.f;
    }
  for (int64_t q = 0; q < Q; ++q) {
    std::memcpy(tile + q * Kp, rows[q], K * sizeof(float));
    std::fill(tile + q * Kp + K, tile + (q + 1) * Kp, 0.f);
  }
  auto sim = [&](int64_t q, int c) { return load(tile + q * Kp + c * V); };
  auto clip = [&](Vec s) { return o.clipped ? (s < 0.f ? s * 0.1f : s) : s; };

  // f: lambda_softmax over each context's normalisation across the queries.
  if (o.raw_norm == kSoftmax) {
    for (int c = 0; c < NC; ++c) { f[c] = splat(-FLT_MAX); z[c] = Vec{}; }
    for (int64_t q = 0; q < Q; ++q) for (int c = 0; c < NC; ++c) f[c] = vmax(f[c], sim(q, c));
    for (int64_t q = 0; q < Q; ++q) for (int c = 0; c < NC; ++c) z[c] += vexp(sim(q, c) - f[c]);
  } else if (o.raw_norm == kNoNorm || o.raw_norm == kClipped) {
    for (int c = 0; c < NC; ++c) f[c] = splat(o.lambda_softmax);
  } else {
    for (int c = 0; c < NC; ++c) f[c] = Vec{};
    for (int64_t q = 0; q < Q; ++q)
      for (int c = 0; c < NC; ++c) {
        const Vec x = clip(sim(q, c));
        f[c] += o.l2 ? x * x : (x < 0.f ? -x : x);
      }
    for (int c = 0; c < NC; ++c)
      for (int64_t l = 0; l < V; ++l) f[c][l] = o.lambda_softmax / ((o.l2 ? std::sqrt(f[c][l]) : f[c][l]) + kEps);
  }

  float total = o.agg == kMax ? -FLT_MAX : 0.f, top = -FLT_MAX;
  for (int64_t q = 0; q < Q; ++q) {
    Vec s[NC], w[NC];
    Vec peak = splat(-FLT_MAX);
    for (int c = 0; c < NC; ++c) {
      s[c] = sim(q, c);
      w[c] = o.raw_norm == kSoftmax ? vexp(s[c] - f[c]) * (o.lambda_softmax / z[c]) : clip(s[c]) * f[c];
      peak = vmax(peak, live[c] > 0.f ? w[c] : splat(-FLT_MAX));
    }
    const float m = hmax(peak);
    Vec zq = {}, num = {};
    for (int c = 0; c < NC; ++c) {
      w[c] = live[c] * vexp(w[c] - m);  // unnormalised attention; the sums below divide by zq
      zq += w[c];
      num += w[c] * s[c];
    }
    float weights[Kp];
    std::memcpy(weights, w, sizeof(w));
    Vec gw[NC] = {};  // G w: w^T G w is the attended context's squared norm times zq^2
    for (int64_t j = 0; j < K; ++j) {
      const Vec wj = splat(weights[j]);
      for (int c = 0; c < NC; ++c) gw[c] += wj * load(G + j * Kp + c * V);
    }
    Vec ctx = {};
    for (int c = 0; c < NC; ++c) ctx += w[c] * gw[c];
    const float zs = hsum(zq);
    const float norm_sq = query_sq[q] * hsum(ctx) / (zs * zs);
    const float cosine = (hsum(num) / zs) / std::sqrt(std::max(norm_sq, kEps * kEps));
    cosines[q] = cosine;
    if (o.agg == kMax) total = std::max(total, cosine);
    else if (o.agg == kLogSumExp) top = std::max(top, cosine * o.lambda_lse);
    else total += cosine;
  }
  if (o.agg == kLogSumExp) {
    float sum = 0.f;
    for (int64_t q = 0; q < Q; ++q) sum += std::exp(cosines[q] * o.lambda_lse - top);
    return (top + std::log(sum)) / o.lambda_lse;
  }
  return o.agg == kMean ? total / static_cast<float>(Q) : total;
}

// The same pair with the queries in lanes: for few contexts and many queries (i2t: 36 regions
// attend over a dozen words), where per-query horizontal reductions would dominate. rows[k]
// points at the Q similarities of context k with every query; G is the (K, K) context Gram
// matrix; NQ = padded query count / V. tile holds 2 * K * NQ * V floats.
template <int NQ>
float score_pair_query_lanes(const float* const* rows, int64_t K, int64_t Q, const float* G, const bool* query_mask,
                             const float* query_sq, const Options& o, float* tile) {
  constexpr int64_t Qp = NQ * V;
  float* raw = tile;            // (K, Qp) similarities, zero-padded
  float* weights = tile + K * Qp;  // (K, Qp) logits, then unnormalised attention
  Vec live[NQ], sq[NQ];
  for (int c = 0; c < NQ; ++c)
    for (int64_t l = 0; l < V; ++l) {
      const int64_t q = c * V + l;
      live[c][l] = q < Q && (!query_mask || query_mask[q]) ? 1.f : 0.f;
      sq[c][l] = q < Q ? query_sq[q] : 0.f;
    }
  auto at = [&](float* base, int64_t k, int c) { return base + k * Qp + c * V; };
  auto clip = [&](Vec s) { return o.clipped ? (s < 0.f ? s * 0.1f : s) : s; };
  // Logits: each context's raw normalisation across the real queries, times lambda_softmax.
  for (int64_t k = 0; k < K; ++k) {
    std::memcpy(raw + k * Qp, rows[k], Q * sizeof(float));
    std::fill(raw + k * Qp + Q, raw + (k + 1) * Qp, 0.f);
    Vec x[NQ];
    for (int c = 0; c < NQ; ++c) x[c] = clip(load(at(raw, k, c)));
    float scale = o.lambda_softmax;
    if (o.raw_norm == kSoftmax) {
      Vec peak = splat(-FLT_MAX);
      for (int c = 0; c < NQ; ++c) peak = vmax(peak, live[c] > 0.f ? x[c] : splat(-FLT_MAX));
      const float m = hmax(peak);
      Vec z = {};
      for (int c = 0; c < NQ; ++c) { x[c] = live[c] * vexp(x[c] - m); z += x[c]; }
      scale /= hsum(z);
    } else if (o.raw_norm != kNoNorm && o.raw_norm != kClipped) {
      Vec n = {};  // padded and masked queries hold zero similarity: they add nothing
      for (int c = 0; c < NQ; ++c) n += o.l2 ? x[c] * x[c] : (x[c] < 0.f ? -x[c] : x[c]);
      scale /= (o.l2 ? std::sqrt(hsum(n)) : hsum(n)) + kEps;
    }
    for (int c = 0; c < NQ; ++c) {
      x[c] *= scale;
      std::memcpy(at(weights, k, c), &x[c], sizeof(Vec));
    }
  }
  // Softmax over the contexts for every query at once.
  Vec peak[NQ], z[NQ] = {}, num[NQ] = {}, ctx[NQ] = {};
  for (int c = 0; c < NQ; ++c) peak[c] = splat(-FLT_MAX);
  for (int64_t k = 0; k < K; ++k)
    for (int c = 0; c < NQ; ++c) peak[c] = vmax(peak[c], load(at(weights, k, c)));
  for (int64_t k = 0; k < K; ++k) {
    for (int c = 0; c < NQ; ++c) {
      const Vec w = vexp(load(at(weights, k, c)) - peak[c]);
      std::memcpy(at(weights, k, c), &w, sizeof(Vec));
      z[c] += w;
      num[c] += w * load(at(raw, k, c));
    }
  }
  // w^T G w per query: the attended context's squared norm times z^2.
  for (int64_t k = 0; k < K; ++k) {
    Vec gw[NQ] = {};
    for (int64_t j = 0; j < K; ++j) {
      const float g = G[k * K + j];
      for (int c = 0; c < NQ; ++c) gw[c] += g * load(at(weights, j, c));
    }
    for (int c = 0; c < NQ; ++c) ctx[c] += load(at(weights, k, c)) * gw[c];
  }
  Vec cosines[NQ];
  for (int c = 0; c < NQ; ++c) {
    const Vec zs = z[c] + (1.f - live[c]);  // padded lanes: avoid 0/0, they are masked below
    const Vec norm_sq = sq[c] * ctx[c] / (zs * zs);
    Vec root;
    for (int64_t l = 0; l < V; ++l) root[l] = std::sqrt(std::max(norm_sq[l], kEps * kEps));
    cosines[c] = (num[c] / zs) / root;
  }
  if (o.agg == kMax || o.agg == kLogSumExp) {
    const float scale = o.agg == kLogSumExp ? o.lambda_lse : 1.f;
    Vec best = splat(-FLT_MAX);
    for (int c = 0; c < NQ; ++c) best = vmax(best, live[c] > 0.f ? cosines[c] * scale : splat(-FLT_MAX));
    const float top = hmax(best);
    if (o.agg == kMax) return top;
    Vec sum = {};
    for (int c = 0; c < NQ; ++c) sum += live[c] * vexp(cosines[c] * scale - top);
    return (top + std::log(hsum(sum))) / scale;
  }
  Vec total = {}, count = {};
  for (int c = 0; c < NQ; ++c) { total += live[c] * cosines[c]; count += live[c]; }
  return o.agg == kMean ? hsum(total) / hsum(count) : hsum(total);
}

using PairFn = float (*)(const float* const*, int64_t, int64_t, const float*, const bool*, const float*,
                         const Options&, float*, float*);
constexpr PairFn kPairFns[kMaxGroups] = {score_pair<1>, score_pair<2>, score_pair<3>, score_pair<4>,
                                         score_pair<5>, score_pair<6>, score_pair<7>, score_pair<8>};
using QueryLanesFn = float (*)(const float* const*, int64_t, int64_t, const float*, const bool*, const float*,
                               const Options&, float*);
constexpr QueryLanesFn kQueryLanesFns[kMaxGroups] = {
    score_pair_query_lanes<1>, score_pair_query_lanes<2>, score_pair_query_lanes<3>, score_pair_query_lanes<4>,
    score_pair_query_lanes<5>, score_pair_query_lanes<6>, score_pair_query_lanes<7>, score_pair_query_lanes<8>};

void check(const at::Tensor& t, const char* name, at::ScalarType dtype, at::IntArrayRef sizes) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.is_contiguous(), name,
              ": expected a contiguous CPU tensor of ", dtype);
  TORCH_CHECK(t.sizes() == sizes, name, ": expected shape ", sizes, ", got ", t.sizes());
}

Options options(int64_t raw_norm, int64_t agg, double lambda_softmax, double lambda_lse) {
  TORCH_CHECK(raw_norm >= kClippedL2 && raw_norm <= kClippedL1 && agg >= kMean && agg <= kSum, "unknown option");
  return {raw_norm, agg, static_cast<float>(lambda_softmax), static_cast<float>(lambda_lse),
          raw_norm == kClippedL2 || raw_norm == kClipped || raw_norm == kClippedL1,
          raw_norm == kClippedL2 || raw_norm == kL2};
}

int64_t lane_groups(int64_t n, const char* what) {
  const int64_t groups = (n + V - 1) / V;
  TORCH_CHECK(groups >= 1 && groups <= kMaxGroups, what, " per pair must lie in [1, ", kMaxGroups * V, "], got ", n);
  return groups;
}

// Scores every pair (p, n) of sim (P, M, N, L) in parallel: score(p, n, rows, scratch), where
// rows[m] points at the L values of row (p, m, n) and scratch holds scratch_floats floats.
// Returns the (P, N) scores.
template <typename Score>
at::Tensor score_pairs(const at::Tensor& sim, int64_t scratch_floats, const Score& score) {
  const int64_t P = sim.size(0), M = sim.size(1), N = sim.size(2), L = sim.size(3);
  const float* S = sim.data_ptr<float>();
  at::Tensor out = at::empty({P, N}, sim.options());
  float* O = out.data_ptr<float>();
  at::parallel_for(0, P * N, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(scratch_floats);
    std::vector<const float*> rows(M);
    for (int64_t pair = begin; pair < end; ++pair) {  // consecutive pairs share cache lines of sim
      const int64_t p = pair / N, n = pair % N;
      for (int64_t m = 0; m < M; ++m) rows[m] = S + ((p * M + m) * N + n) * L;
      O[pair] = score(p, n, rows.data(), scratch.data());
    }
  });
  return out;
}

// sim (B, Q, A, K): row (b, q, a) holds query q of owner b against the K contexts of owner a.
// gram (A, K, Kp): context Gram matrices, columns zero-padded to Kp = V * ceil(K / V).
// query_sq (B, Q): squared query norms. context_mask (A, K): True on real contexts.
// Returns (B, A) scores.
at::Tensor contexts_in_lanes(const at::Tensor& sim, const at::Tensor& gram, const at::Tensor& query_sq,
                             const std::optional<at::Tensor>& context_mask, int64_t raw_norm, int64_t agg,
                             double lambda_softmax, double lambda_lse) {
  TORCH_CHECK(sim.dim() == 4, "sim: expected (B, Q, A, K)");
  const int64_t B = sim.size(0), Q = sim.size(1), A = sim.size(2), K = sim.size(3);
  const int64_t groups = lane_groups(K, "contexts"), Kp = groups * V;
  const Options o = options(raw_norm, agg, lambda_softmax, lambda_lse);
  check(sim, "sim", at::kFloat, {B, Q, A, K});
  check(gram, "gram", at::kFloat, {A, K, Kp});
  check(query_sq, "query_sq", at::kFloat, {B, Q});
  if (context_mask) check(*context_mask, "context_mask", at::kBool, {A, K});
  const float* G = gram.data_ptr<float>();
  const float* SQ = query_sq.data_ptr<float>();
  const bool* cmask = context_mask ? context_mask->data_ptr<bool>() : nullptr;
  const PairFn pair_fn = kPairFns[groups - 1];
  return score_pairs(sim, Q * Kp + Q, [&](int64_t b, int64_t a, const float* const* rows, float* scratch) {
    return pair_fn(rows, Q, K, G + a * K * Kp, cmask ? cmask + a * K : nullptr, SQ + b * Q, o, scratch,
                   scratch + Q * Kp);
  });
}

// sim (A, K, B, Q): row (a, k, b) holds context k of owner a against the Q queries of owner b.
// gram (A, K, K): context Gram matrices. query_sq (B, Q): squared query norms. query_mask
// (B, Q): True on real queries. Returns (A, B) scores.
at::Tensor queries_in_lanes(const at::Tensor& sim, const at::Tensor& gram, const at::Tensor& query_sq,
                            const std::optional<at::Tensor>& query_mask, int64_t raw_norm, int64_t agg,
                            double lambda_softmax, double lambda_lse) {
  TORCH_CHECK(sim.dim() == 4, "sim: expected (A, K, B, Q)");
  const int64_t A = sim.size(0), K = sim.size(1), B = sim.size(2), Q = sim.size(3);
  const int64_t groups = lane_groups(Q, "queries"), Qp = groups * V;
  const Options o = options(raw_norm, agg, lambda_softmax, lambda_lse);
  check(sim, "sim", at::kFloat, {A, K, B, Q});
  check(gram, "gram", at::kFloat, {A, K, K});
  check(query_sq, "query_sq", at::kFloat, {B, Q});
  if (query_mask) check(*query_mask, "query_mask", at::kBool, {B, Q});
  const float* G = gram.data_ptr<float>();
  const float* SQ = query_sq.data_ptr<float>();
  const bool* qmask = query_mask ? query_mask->data_ptr<bool>() : nullptr;
  const QueryLanesFn pair_fn = kQueryLanesFns[groups - 1];
  return score_pairs(sim, 2 * K * Qp, [&](int64_t a, int64_t b, const float* const* rows, float* scratch) {
    return pair_fn(rows, K, Q, G + a * K * K, qmask ? qmask + b * Q : nullptr, SQ + b * Q, o, scratch);
  });
}

}  // namespace

TORCH_LIBRARY(scan_fused, m) {
  m.def("contexts_in_lanes(Tensor sim, Tensor gram, Tensor query_sq, Tensor? context_mask, "
        "int raw_norm, int agg, float lambda_softmax, float lambda_lse) -> Tensor",
        &contexts_in_lanes);
  m.def("queries_in_lanes(Tensor sim, Tensor gram, Tensor query_sq, Tensor? query_mask, "
        "int raw_norm, int agg, float lambda_softmax, float lambda_lse) -> Tensor",
        &queries_in_lanes);
}
