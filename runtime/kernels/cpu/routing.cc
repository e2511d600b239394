// Top-k routing and token permutation for mixture-of-experts layers.
//
// Every loop here is a gather or a scatter whose writes are private to one
// token (or one expert-ordered row, which belongs to exactly one assignment),
// so tokens run in parallel without conflicts. Only the counting sort is
// sequential: it is O(assignments) and its stability depends on order.
#include "runtime/kernels/cpu/routing.h"

#include <algorithm>
#include <vector>

#include "runtime/base/status.h"
#include "runtime/kernels/cpu/parallel_loops.h"

namespace tessera::cpu {

void TopKForward(const float* probs, int32_t* expert_index, float* weights, int64_t tokens,
                 int64_t experts, int64_t k) {
  TESSERA_CHECK(k >= 0 && k <= experts);
#pragma omp parallel if (ShouldParallelize(tokens * experts))
  {
    thread_local std::vector<int32_t> order;
    order.resize(experts);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      const float* p = probs + t * experts;
      for (int64_t e = 0; e < experts; ++e) order[e] = static_cast<int32_t>(e);
      // Larger probability first; equal probabilities by lower expert index.
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [p](int32_t a, int32_t b) {
        return p[a] > p[b] || (p[a] == p[b] && a < b);
      });
      for (int64_t s = 0; s < k; ++s) {
        expert_index[t * k + s] = order[s];
        weights[t * k + s] = p[order[s]];
      }
    }
  }
}

void TopKBackward(const float* dweights, const int32_t* expert_index, float* dprobs, int64_t tokens,
                  int64_t experts, int64_t k) {
  // The k experts of one token are distinct, and each token owns its row.
#pragma omp parallel for schedule(static) if (ShouldParallelize(tokens * k))
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t s = 0; s < k; ++s) {
      dprobs[t * experts + expert_index[t * k + s]] += dweights[t * k + s];
    }
  }
}

void SortByExpert(const int32_t* expert_index, int64_t assignments, int64_t experts,
                  int64_t* expert_offsets, int32_t* row_of_assignment, int32_t* assignment_of_row) {
  std::fill(expert_offsets, expert_offsets + experts + 1, int64_t{0});
  for (int64_t a = 0; a < assignments; ++a) {
    const int32_t e = expert_index[a];
    TESSERA_CHECK(e < experts);
    if (e >= 0) ++expert_offsets[e + 1];
  }
  for (int64_t e = 0; e < experts; ++e) expert_offsets[e + 1] += expert_offsets[e];
  // next[e]: the next free row of expert e; filling in assignment order keeps
  // the sort stable.
  std::vector<int64_t> next(expert_offsets, expert_offsets + experts);
  for (int64_t a = 0; a < assignments; ++a) {
    const int32_t e = expert_index[a];
    if (e < 0) {
      row_of_assignment[a] = -1;
      continue;
    }
    const int64_t row = next[e]++;
    row_of_assignment[a] = static_cast<int32_t>(row);
    assignment_of_row[row] = static_cast<int32_t>(a);
  }
  // Rows past the kept count do not exist; mark them rather than leave garbage.
  std::fill(assignment_of_row + expert_offsets[experts], assignment_of_row + assignments, -1);
}

void PermuteForward(const float* x, const int32_t* assignment_of_row, float* out, int64_t rows,
                    int64_t dim, int64_t k) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    if (assignment_of_row[r] < 0) {  // an unused slot
      std::fill(out + r * dim, out + (r + 1) * dim, 0.0f);
      continue;
    }
    const float* src = x + (assignment_of_row[r] / k) * dim;
    std::copy(src, src + dim, out + r * dim);
  }
}

void PermuteBackward(const float* dout, const int32_t* row_of_assignment, float* dx, int64_t tokens,
                     int64_t dim, int64_t k) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(tokens * k * dim))
  for (int64_t t = 0; t < tokens; ++t) {
    float* dst = dx + t * dim;
    std::fill(dst, dst + dim, 0.0f);
    for (int64_t s = 0; s < k; ++s) {
      const int32_t row = row_of_assignment[t * k + s];
      if (row < 0) continue;
      const float* src = dout + static_cast<int64_t>(row) * dim;
#pragma omp simd
      for (int64_t d = 0; d < dim; ++d) dst[d] += src[d];
    }
  }
}

void UnpermuteCombineForward(const float* expert_out, const int32_t* row_of_assignment,
                             const float* weights, float* out, int64_t tokens, int64_t dim,
                             int64_t k) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(tokens * k * dim))
  for (int64_t t = 0; t < tokens; ++t) {
    float* dst = out + t * dim;
    for (int64_t s = 0; s < k; ++s) {
      const int32_t row = row_of_assignment[t * k + s];
      if (row < 0) continue;
      const float w = weights[t * k + s];
      const float* src = expert_out + static_cast<int64_t>(row) * dim;
#pragma omp simd
      for (int64_t d = 0; d < dim; ++d) dst[d] += w * src[d];
    }
  }
}

void UnpermuteCombineBackward(const float* dout, const float* expert_out,
                              const int32_t* row_of_assignment, const float* weights,
                              float* dexpert_out, float* dweights, int64_t tokens, int64_t dim,
                              int64_t k) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(tokens * k * dim))
  for (int64_t t = 0; t < tokens; ++t) {
    const float* g = dout + t * dim;
    for (int64_t s = 0; s < k; ++s) {
      const int64_t a = t * k + s;
      const int32_t row = row_of_assignment[a];
      if (row < 0) {
        dweights[a] = 0.0f;
        continue;
      }
      const float w = weights[a];
      const float* y = expert_out + static_cast<int64_t>(row) * dim;
      float* dy = dexpert_out + static_cast<int64_t>(row) * dim;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < dim; ++d) {
        dy[d] = w * g[d];
        dot += g[d] * y[d];
      }
      dweights[a] = dot;
    }
  }
}

void MoeRoutingStatistics(const int32_t* expert_index, const float* probs, int64_t tokens,
                          int64_t experts, int64_t k, int64_t* counts, double* prob_sums) {
  std::fill(counts, counts + experts, int64_t{0});
  for (int64_t a = 0; a < tokens * k; ++a) {
    const int32_t e = expert_index[a];
    TESSERA_CHECK(e < experts);
    if (e >= 0) ++counts[e];
  }
  // Token order per expert: the sums of the host bookkeeping this replaces.
  std::fill(prob_sums, prob_sums + experts, 0.0);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t e = 0; e < experts; ++e) prob_sums[e] += probs[t * experts + e];
}

void MoeBalance(const int64_t* counts, int64_t count_tokens, const double* prob_sums,
                int64_t prob_tokens, int64_t experts, int64_t k, double coef, double* out) {
  double loss = 0;
  for (int64_t e = 0; e < experts; ++e) {
    const double share = count_tokens == 0 ? 0.0
                                           : static_cast<double>(counts[e]) /
                                                 static_cast<double>(count_tokens * k);
    const double f = share * static_cast<double>(experts);
    const double mean_prob =
        prob_tokens > 0 ? prob_sums[e] / static_cast<double>(prob_tokens) : prob_sums[e];
    out[e] = f;
    out[experts + 1 + e] = share;
    loss += coef * f * mean_prob;
  }
  out[experts] = loss;
}

void MoeCapacitySlots(const int32_t* chosen, int64_t assignments, int64_t experts,
                      int64_t capacity, int32_t* expert_index, int32_t* row_of_assignment,
                      int32_t* assignment_of_row, int64_t* dropped) {
  TESSERA_CHECK(capacity >= 0);
  std::fill(assignment_of_row, assignment_of_row + experts * capacity, -1);
  std::vector<int64_t> taken(experts, 0);
  int64_t count = 0;
  for (int64_t a = 0; a < assignments; ++a) {
    const int32_t e = chosen[a];
    TESSERA_CHECK(e >= 0 && e < experts);
    if (taken[e] >= capacity) {
      expert_index[a] = -1;
      row_of_assignment[a] = -1;
      ++count;
      continue;
    }
    const int64_t row = e * capacity + taken[e]++;
    expert_index[a] = e;
    row_of_assignment[a] = static_cast<int32_t>(row);
    assignment_of_row[row] = static_cast<int32_t>(a);
  }
  *dropped = count;
}

void MoeRenormalizeForward(const float* raw, float* weights, int64_t tokens, int64_t k) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(tokens * k))
  for (int64_t t = 0; t < tokens; ++t) {
    float sum = 1e-20f;
    for (int64_t s = 0; s < k; ++s) sum += raw[t * k + s];
    for (int64_t s = 0; s < k; ++s) weights[t * k + s] = raw[t * k + s] / sum;
  }
}

void MoeRenormalizeBackward(const float* raw, const float* weights, float* dweights,
                            int64_t tokens, int64_t k) {
#pragma omp parallel for schedule(static) if (ShouldParallelize(tokens * k))
  for (int64_t t = 0; t < tokens; ++t) {
    float sum = 1e-20f, dot = 0;
    for (int64_t s = 0; s < k; ++s) {
      sum += raw[t * k + s];
      dot += dweights[t * k + s] * weights[t * k + s];
    }
    for (int64_t s = 0; s < k; ++s) dweights[t * k + s] = (dweights[t * k + s] - dot) / sum;
  }
}

void MoeBalanceGradient(const double* f, double scale, double divisor, float* dprobs,
                        int64_t tokens, int64_t experts) {
  std::vector<float> g(experts);
  for (int64_t e = 0; e < experts; ++e) g[e] = static_cast<float>(scale * f[e] / divisor);
#pragma omp parallel for schedule(static) if (ShouldParallelize(tokens * experts))
  for (int64_t t = 0; t < tokens; ++t) {
    float* row = dprobs + t * experts;
    for (int64_t e = 0; e < experts; ++e) row[e] += g[e];
  }
}

}  // namespace tessera::cpu
