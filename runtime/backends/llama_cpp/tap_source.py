"""The C source of the routing tap (built by llama_cpp/tap.py beside it) and its ctypes mirror.

What runs per graph node and per token belongs in C: llama.cpp asks the eval callback about
every node, and a decode step of a small model is shorter than a few hundred Python calls. The
helper answers those questions, keeps one-token routing events whose experts are all resident
in a log instead of calling Python, and (when asked) guesses the next MoE layers' experts by
pre-gating (runtime/experts/pregate.py) from a layer's hidden state (its residual input `ffn_inp`,
watched and read at its routing event, or its output `l_out`, a stop of C's own) and starts
reading the non-resident ones with one process_madvise(MADV_WILLNEED) per target layer. It calls
Python only for events Python must decide.
Only libc and libm are used; ggml is reached through function pointers handed in from Python.
"""

from __future__ import annotations

import ctypes

MAX_TAPS = 8
MAX_WATCH = 2
MAX_LAYERS = 4096
MAX_TENSORS = 4  # stacked expert tensors per layer (gate, up, down; gate_up fused: fewer)
MAX_WIDTH = 64  # experts guessed per target layer, at most
SLOTS = 8192  # cached answers per node address
SEQ = 4096  # the same answers in asking order

# Log record kinds are the seam's (runtime/backends/base.py: MARK, PREFETCH_BASE); the C below
# writes them as literals (-1, -2 - layer).

SOURCE = r"""
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_TAPS 8
#define MAX_WATCH 2
#define MAX_LAYERS 4096
#define MAX_TENSORS 4
#define MAX_WIDTH 64
#define SLOTS 8192  /* answer cache: a power of two above the node count of one graph */
#define SEQ 4096    /* answers kept in asking order */

typedef const char *(*name_fn)(const void *tensor);
typedef void (*get_fn)(const void *tensor, void *data, size_t offset, size_t size);
/* Returns non-zero to stop computing this graph here (the runtime fails the step). */
typedef int32_t (*deliver_fn)(void *tensor, int32_t tap, int32_t layer);

/* The leading fields of ggml.h's struct ggml_tensor (stable across ggml versions). */
struct head { int32_t type; void *buffer; int64_t ne[4]; size_t nb[4]; };

struct edgemoe_tap {
    name_fn get_name;
    get_fn tensor_get;
    deliver_fn deliver;
    int32_t n_taps;         /* taps [0, n_taps) may stop the graph: */
    int32_t n_deliver;      /* [0, n_deliver) always, delivered to Python; the rest only as
                               the prefetch source (pf_tap), handled here */
    int32_t n_watch;        /* taps [n_taps, n_taps + n_watch) are only remembered */
    int32_t lens[MAX_TAPS];
    char prefixes[MAX_TAPS][48];
    /* routing log: all-resident one-token events stay here until Python replays them */
    int32_t ids_tap;        /* tap index of the chosen-experts tensor; -1: no log */
    int32_t python_needed;  /* Python sets it: deliver the next routing event */
    int32_t n_layers;
    int32_t n_experts;
    const uint8_t *resident;  /* [layer][expert] != 0: counted in the books */
    int32_t *log;           /* records of `width` int32 */
    int32_t width;
    int32_t log_cap;
    int32_t log_len;
    /* prefetch by pre-gating */
    int32_t pf_depth;       /* MoE layers ahead; 0: off */
    int32_t pf_width;       /* experts guessed per target layer; 0: off */
    int32_t pf_watch;       /* watch index of the hidden state read at a routing event */
    int32_t pf_tap;         /* or: the tap whose node is the hidden state (a stop); -1: none */
    int32_t n_embd;
    const float *routers;   /* [layer][expert][n_embd], norm folded in */
    const float *biases;    /* [layer][expert]: selection bias added to the sigmoid of the
                               logit (DeepSeek-V3's routers), or to the softmax probability
                               when softmax_bias is set (ERNIE's); NULL: rank the raw logits */
    const float *logit_biases;  /* [layer][expert]: the router's own bias, added to the logits
                               of the RMS-normalised state (gpt-oss); NULL: none */
    float norm_eps;
    int32_t pad0;
    const int32_t *next;    /* [layer][2]: the next MoE layers, -1: none */
    const uint64_t *spans;  /* [layer][MAX_TENSORS][2]: address of expert 0, stride; 0: none */
    float *scratch;         /* n_embd + n_experts floats */
    int32_t page;
    int32_t pidfd;          /* for process_madvise; -1: one madvise per range */
    int64_t asked;
    int64_t delivered;
    int64_t logged;
    int64_t pf_calls;
    int64_t pf_bytes;
    /* quiet layers: a one-token routing event whose answer is known needs no stop */
    const uint8_t *known;   /* [layer]: 2 every expert pinned, 1 every expert resident in a
                               cache that evicts nothing, 0 unknown; NULL: always stop */
    int32_t sample;         /* this step stops where known[layer] <= sample (Python: 0 or 1) */
    int32_t quiet_pad;
    int64_t quiet;          /* one-token events not stopped at, per level: [1], [2] */
    int64_t quiet_by[3];
    int64_t first_ask_ns;   /* CLOCK_MONOTONIC of the first question since Python zeroed it:
                               when a decode's graph was built and its compute began */
    uint32_t epoch;         /* Python bumps it when the batch shape changes (new node layout) */
    uint32_t softmax_bias;  /* biases add to softmax probabilities, not to sigmoids */
    void *watched[MAX_WATCH][MAX_LAYERS];
    /* Answers per node address for the current layout: reading a node's name costs a cache
       miss per node per token, a lookup here does not. Deliveries re-check the name. */
    struct { const void *key; int32_t code; uint32_t epoch; } slots[SLOTS];
    /* The same answers in the order the scheduler asks (one graph, then the same graph again):
       a step reads them front to back, a few cache lines, where the slots above are scattered
       over 128 KiB that the matmuls have pushed out of cache. */
    uint32_t seq_epoch;
    int32_t seq_len;        /* answers recorded for this epoch; -1 - n: sealed at n */
    int32_t seq_pos;
    struct { const void *key; int32_t code; int32_t pad; } seq[SEQ];
};

static int match(const struct edgemoe_tap *s, const char *name, int n, int32_t *layer) {
    for (int i = 0; i < n; i++) {
        if (name[0] != s->prefixes[i][0]) continue;
        if (memcmp(name, s->prefixes[i], (size_t)s->lens[i]) != 0) continue;
        const char *p = name + s->lens[i];
        int32_t v = 0;
        if (*p < '0' || *p > '9') continue;
        while (*p >= '0' && *p <= '9' && v < MAX_LAYERS) v = v * 10 + (*p++ - '0');
        if (*p != 0 || v >= MAX_LAYERS) continue;
        *layer = v;
        return i;
    }
    return -1;
}

static int32_t *record(struct edgemoe_tap *s) {
    if (s->log == NULL || s->log_len >= s->log_cap) return NULL;
    return s->log + (size_t)s->log_len * (size_t)s->width;
}

static void advise(struct edgemoe_tap *s, struct iovec *iov, int n) {
    if (n == 0) return;
    if (s->pidfd >= 0) {
        long r = syscall(SYS_process_madvise, s->pidfd, iov, (size_t)n, MADV_WILLNEED, 0u);
        if (r >= 0) return;
        s->pidfd = -1;  /* not supported here: fall back for good */
    }
    for (int i = 0; i < n; i++) madvise(iov[i].iov_base, iov[i].iov_len, MADV_WILLNEED);
}

/* Guess the experts of the MoE layers after `layer` from its hidden state `h` (one token);
   read the guessed experts that are not resident, one batch per target layer, and log what
   was read. */
static void prefetch(struct edgemoe_tap *s, int32_t layer, const struct head *h) {
    if (s->pf_depth <= 0 || s->pf_width <= 0 || s->routers == NULL || layer >= s->n_layers)
        return;
    if (h == NULL || h->type != 0 || h->ne[0] != s->n_embd || h->nb[0] != 4) return;
    float *x = s->scratch, *score = s->scratch + s->n_embd;
    s->tensor_get(h, x, 0, (size_t)s->n_embd * 4);  /* row 0: the one token */
    float inv_rms = 1.0f;
    if (s->logit_biases != NULL) {
        float ss = 0.0f;
        for (int32_t j = 0; j < s->n_embd; j++) ss += x[j] * x[j];
        inv_rms = 1.0f / sqrtf(ss / (float)s->n_embd + s->norm_eps);
    }
    int width = s->pf_width < s->n_experts ? s->pf_width : s->n_experts;
    if (width > MAX_WIDTH) width = MAX_WIDTH;
    for (int d = 0; d < s->pf_depth && d < 2; d++) {
        int32_t t = s->next[layer * 2 + d];
        if (t < 0 || t >= s->n_layers) break;
        const float *w = s->routers + (size_t)t * s->n_experts * s->n_embd;
        int32_t top[MAX_WIDTH];
        int n_top = 0;
        float hi = -INFINITY, sum = 0.0f;
        for (int32_t e = 0; e < s->n_experts; e++) {
            const float *row = w + (size_t)e * s->n_embd;
            float acc = 0.0f;
            for (int32_t j = 0; j < s->n_embd; j++) acc += row[j] * x[j];
            if (s->logit_biases != NULL)
                acc = acc * inv_rms + s->logit_biases[(size_t)t * s->n_experts + e];
            score[e] = acc;
            if (acc > hi) hi = acc;
        }
        if (s->biases != NULL && s->softmax_bias)
            for (int32_t e = 0; e < s->n_experts; e++) sum += expf(score[e] - hi);
        for (int32_t e = 0; e < s->n_experts; e++) {
            float acc = score[e];
            if (s->biases != NULL) {
                float p = s->softmax_bias ? expf(acc - hi) / sum : 1.0f / (1.0f + expf(-acc));
                acc = p + s->biases[(size_t)t * s->n_experts + e];
                score[e] = acc;
            }
            if (n_top == width && !(acc > score[top[width - 1]])) continue;
            int at = n_top < width ? n_top++ : width - 1;
            while (at > 0 && score[top[at - 1]] < acc) {
                top[at] = top[at - 1];
                at--;
            }
            top[at] = e;
        }
        int32_t *rec = record(s);
        if (rec == NULL) return;  /* log full: read nothing we could not account for */
        struct iovec iov[MAX_WIDTH * MAX_TENSORS];
        int n_iov = 0, n_ids = 0;
        const uint8_t *res = s->resident + (size_t)t * s->n_experts;
        for (int i = 0; i < n_top && n_ids < s->width - 2; i++) {
            int32_t e = top[i];
            if (res[e]) continue;
            const uint64_t *sp = s->spans + (size_t)t * MAX_TENSORS * 2;
            for (int k = 0; k < MAX_TENSORS; k++) {
                if (sp[2 * k] == 0) continue;
                uint64_t lo = sp[2 * k] + (uint64_t)e * sp[2 * k + 1];
                uint64_t hi = lo + sp[2 * k + 1];
                lo -= lo % (uint64_t)s->page;
                iov[n_iov].iov_base = (void *)(uintptr_t)lo;
                iov[n_iov].iov_len = (size_t)(hi - lo);
                s->pf_bytes += (int64_t)(hi - lo);
                n_iov++;
            }
            rec[2 + n_ids++] = e;
        }
        if (n_ids == 0) continue;
        advise(s, iov, n_iov);
        s->pf_calls++;
        rec[0] = -2 - t;
        rec[1] = n_ids;
        s->log_len++;
    }
}

static bool log_hit(struct edgemoe_tap *s, const void *tensor, int32_t layer) {
    const struct head *h = (const struct head *)tensor;
    int64_t k = h->ne[0];
    int32_t *rec = record(s);
    if (s->python_needed || rec == NULL || layer >= s->n_layers) return false;
    if (h->ne[1] * h->ne[2] * h->ne[3] != 1 || k + 2 > s->width || h->nb[0] != 4) return false;
    s->tensor_get(tensor, rec + 2, 0, (size_t)k * 4);
    const uint8_t *res = s->resident + (size_t)layer * (size_t)s->n_experts;
    for (int64_t j = 0; j < k; j++) {
        int32_t e = rec[2 + j];
        if (e < 0 || e >= s->n_experts || !res[e]) return false;
    }
    rec[0] = layer;
    rec[1] = (int32_t)k;
    s->log_len++;
    s->logged++;
    return true;
}

/* Whether a target layer of prefetching from `layer` could still read something. */
static bool pf_wanted(const struct edgemoe_tap *s, int32_t layer) {
    if (s->pf_depth <= 0 || s->pf_width <= 0 || s->next == NULL) return false;
    if (s->known == NULL || layer >= s->n_layers) return true;
    for (int d = 0; d < s->pf_depth && d < 2; d++) {
        int32_t t = s->next[layer * 2 + d];
        if (t >= 0 && t < s->n_layers && s->known[t] == 0) return true;
    }
    return false;
}

/* A one-token routing node whose answer Python knows (every expert it can pick is resident and
   stays so) and whose step needs nothing else from the stop: no prefetch from here could read,
   and Python does not want events delivered. Counted instead of logged. */
static bool quiet(struct edgemoe_tap *s, const void *tensor, int32_t layer) {
    const struct head *h = (const struct head *)tensor;
    if (s->known == NULL || s->python_needed || layer >= s->n_layers || s->log == NULL)
        return false;
    uint8_t level = s->known[layer];
    if (level <= s->sample || level > 2 || h->ne[1] * h->ne[2] * h->ne[3] != 1) return false;
    if (pf_wanted(s, layer)) return false;
    s->quiet++;
    s->quiet_by[level]++;
    return true;
}

/* The tap index (or -1) and layer of a node, cached per address for the current epoch. */
static int lookup_slot(struct edgemoe_tap *s, const void *tensor, int32_t *layer) {
    uintptr_t h = ((uintptr_t)tensor >> 4) * (uintptr_t)0x9E3779B97F4A7C15ull;
    for (uint32_t probe = 0; probe < 16; probe++) {
        uint32_t at = (uint32_t)((h >> 40) + probe) & (SLOTS - 1);
        if (s->slots[at].epoch == s->epoch && s->slots[at].key == tensor) {
            int32_t code = s->slots[at].code;
            *layer = code < 0 ? 0 : code % MAX_LAYERS;
            return code < 0 ? -1 : code / MAX_LAYERS;
        }
        if (s->slots[at].epoch != s->epoch) {
            int i = match(s, s->get_name(tensor), s->n_taps + s->n_watch, layer);
            s->slots[at].key = tensor;
            s->slots[at].code = i < 0 ? -1 : i * MAX_LAYERS + *layer;
            s->slots[at].epoch = s->epoch;
            return i;
        }
    }
    return match(s, s->get_name(tensor), s->n_taps + s->n_watch, layer);
}

static int decode_code(int32_t code, int32_t *layer) {
    *layer = code < 0 ? 0 : code % MAX_LAYERS;
    return code < 0 ? -1 : code / MAX_LAYERS;
}

/* lookup_slot, read in asking order when the graph is the one seen before (the usual case:
   llama.cpp reuses a graph of the same shape). The first pass of an epoch records; a pass
   starts over where the first node comes again. Keys are always compared, so a graph that
   differs only falls back to the slots. */
static int lookup(struct edgemoe_tap *s, const void *tensor, int32_t *layer) {
    if (s->seq_epoch != s->epoch) {
        s->seq_epoch = s->epoch;
        s->seq_len = 0;
        s->seq_pos = 0;
    }
    int32_t len = s->seq_len < 0 ? -1 - s->seq_len : s->seq_len;
    int32_t pos = s->seq_pos;
    if (pos < len && s->seq[pos].key == tensor) {
        s->seq_pos = pos + 1;
        return decode_code(s->seq[pos].code, layer);
    }
    if (len > 0 && s->seq[0].key == tensor) {  /* the graph again, from its first node */
        if (s->seq_len > 0) s->seq_len = -1 - s->seq_len;  /* first pass over: sealed */
        s->seq_pos = 1;
        return decode_code(s->seq[0].code, layer);
    }
    int i = lookup_slot(s, tensor, layer);
    if (s->seq_len >= 0 && s->seq_len < SEQ) {  /* still recording the first pass */
        s->seq[s->seq_len].key = tensor;
        s->seq[s->seq_len].code = i < 0 ? -1 : i * MAX_LAYERS + *layer;
        s->seq_len++;
        s->seq_pos = s->seq_len;
    }
    return i;
}

bool edgemoe_tap_eval(void *tensor, bool ask, void *user) {
    struct edgemoe_tap *s = (struct edgemoe_tap *)user;
    int32_t layer = 0;
    if (ask) {
        if (s->first_ask_ns == 0) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            s->first_ask_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
        }
        int i = lookup(s, tensor, &layer);
        s->asked++;
        if (i >= s->n_taps) s->watched[i - s->n_taps][layer] = tensor;
        if (i >= s->n_deliver && i < s->n_taps)  /* C's own stop: only while prefetching */
            return i == s->pf_tap && pf_wanted(s, layer);
        if (i == s->ids_tap && quiet(s, tensor, layer)) return false;
        return i >= 0 && i < s->n_taps;
    }
    int i = match(s, s->get_name(tensor), s->n_taps + s->n_watch, &layer);
    if (i < 0 || i >= s->n_taps) return true;
    const struct head *h = (const struct head *)tensor;
    bool one = h->ne[1] * h->ne[2] * h->ne[3] == 1;
    if (i >= s->n_deliver) {  /* the hidden state itself: C's own stop, never Python's */
        if (i == s->pf_tap && one && s->log != NULL) prefetch(s, layer, h);
        return true;
    }
    if (i == s->ids_tap) {
        const struct head *hidden = s->pf_tap < 0 && layer < MAX_LAYERS
            ? (const struct head *)s->watched[s->pf_watch][layer] : NULL;
        bool kept = log_hit(s, tensor, layer);
        /* After the event is logged (or delivered below): the log keeps their order. */
        if (kept) {
            if (one && hidden != NULL) prefetch(s, layer, hidden);
            return true;
        }
        s->delivered++;
        if (s->deliver(tensor, i, layer)) return false;  /* stop before the expert matmuls */
        if (one && hidden != NULL && s->log != NULL) prefetch(s, layer, hidden);
        return true;
    }
    s->delivered++;
    return !s->deliver(tensor, i, layer);
}
"""


class _Slot(ctypes.Structure):
    _fields_ = [("key", ctypes.c_void_p), ("code", ctypes.c_int32), ("epoch", ctypes.c_uint32)]


class _Seq(ctypes.Structure):
    _fields_ = [("key", ctypes.c_void_p), ("code", ctypes.c_int32), ("pad", ctypes.c_int32)]


class TapState(ctypes.Structure):
    """Mirror of `struct edgemoe_tap` in SOURCE."""

    _fields_ = [
        ("get_name", ctypes.c_void_p),
        ("tensor_get", ctypes.c_void_p),
        ("deliver", ctypes.c_void_p),
        ("n_taps", ctypes.c_int32),
        ("n_deliver", ctypes.c_int32),
        ("n_watch", ctypes.c_int32),
        ("lens", ctypes.c_int32 * MAX_TAPS),
        ("prefixes", (ctypes.c_char * 48) * MAX_TAPS),
        ("ids_tap", ctypes.c_int32),
        ("python_needed", ctypes.c_int32),
        ("n_layers", ctypes.c_int32),
        ("n_experts", ctypes.c_int32),
        ("resident", ctypes.c_void_p),
        ("log", ctypes.c_void_p),
        ("width", ctypes.c_int32),
        ("log_cap", ctypes.c_int32),
        ("log_len", ctypes.c_int32),
        ("pf_depth", ctypes.c_int32),
        ("pf_width", ctypes.c_int32),
        ("pf_watch", ctypes.c_int32),
        ("pf_tap", ctypes.c_int32),
        ("n_embd", ctypes.c_int32),
        ("routers", ctypes.c_void_p),
        ("biases", ctypes.c_void_p),
        ("logit_biases", ctypes.c_void_p),
        ("norm_eps", ctypes.c_float),
        ("pad0", ctypes.c_int32),
        ("next", ctypes.c_void_p),
        ("spans", ctypes.c_void_p),
        ("scratch", ctypes.c_void_p),
        ("page", ctypes.c_int32),
        ("pidfd", ctypes.c_int32),
        ("asked", ctypes.c_int64),
        ("delivered", ctypes.c_int64),
        ("logged", ctypes.c_int64),
        ("pf_calls", ctypes.c_int64),
        ("pf_bytes", ctypes.c_int64),
        ("known", ctypes.c_void_p),
        ("sample", ctypes.c_int32),
        ("quiet_pad", ctypes.c_int32),
        ("quiet", ctypes.c_int64),
        ("quiet_by", ctypes.c_int64 * 3),
        ("first_ask_ns", ctypes.c_int64),
        ("epoch", ctypes.c_uint32),
        ("softmax_bias", ctypes.c_uint32),
        ("watched", (ctypes.c_void_p * MAX_LAYERS) * MAX_WATCH),
        ("slots", _Slot * SLOTS),
        ("seq_epoch", ctypes.c_uint32),
        ("seq_len", ctypes.c_int32),
        ("seq_pos", ctypes.c_int32),
        ("seq", _Seq * SEQ),
    ]
