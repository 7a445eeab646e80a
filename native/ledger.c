/* Columnar execution of the clearing ledger (consensus/apps/clearing_columns.py): a run of
 * deposits, withdrawals and trades applied leg by leg, in order, to the working set's columns
 * (copies the caller keeps only if every leg applies). The checks are those of
 * Clearing.deposit / withdraw / trade that depend on the state: the account's next nonce, a
 * withdrawal leaving its cash >= 0, a balance staying inside (-limit, limit) where int64 is exact,
 * a position within max_position, and a reduce-only series' legs shrinking the position. Checks on
 * a transaction's own fields are made before. Integer arithmetic only: the same result on every
 * machine. */
#include <stdint.h>
#include "ledger.h"

/* 0 if every leg applies, else 1 + the index of the first leg that does not (the columns are then
 * partly written and must be discarded). line < 0: not a trade (no position moves). */
int64_t av_ledger_run(const int64_t *row, const int64_t *nonce, const int64_t *col, const int64_t *flow,
                  const uint8_t *withdraw, const int64_t *line, const int64_t *size, const uint8_t *shrink,
                  int64_t n_assets, int64_t max_position, int64_t limit, int64_t *col_nonce, int64_t *col_cash,
                  int64_t *col_size, uint64_t n) {
    for (uint64_t i = 0; i < n; ++i) {
        int64_t r = row[i];
        if (col_nonce[r] != nonce[i]) return (int64_t)(i + 1);
        col_nonce[r] += 1;
        int64_t *cash = &col_cash[r * n_assets + col[i]], after;
        if (__builtin_add_overflow(*cash, flow[i], &after) || after >= limit || after <= -limit) return (int64_t)(i + 1);
        if (withdraw[i] && after < 0) return (int64_t)(i + 1);
        *cash = after;
        if (line[i] < 0) continue;
        int64_t before = col_size[line[i]], moved = size[i], held;
        if (__builtin_add_overflow(before, moved, &held) || held > max_position || held < -max_position)
            return (int64_t)(i + 1);
        if (shrink[i] && !(before != 0 && (before < 0) != (moved < 0) && (moved < 0 ? -moved : moved) <= (before < 0 ? -before : before)))
            return (int64_t)(i + 1);
        col_size[line[i]] = held;
    }
    return 0;
}
