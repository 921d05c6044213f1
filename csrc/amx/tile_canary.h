/*
 * tile_canary.h: the self-test of the real AMX tiles (internal interface;
 * the public one is in fastattn.h, fa_tile_self_test_*).
 *
 * Before the first call of a process that would run the real tiles, the
 * matrix kernels run once on small fixed inputs in a forked child, and the
 * results are held to the matrix-precision rule against the vector path.
 * Until that canary has passed, no tile instruction runs in the caller's
 * process; after a fault, a hang or a mismatch the matrix unit stays off for
 * the process.  Design and reasons: docs/amx.md, "The self-test".
 */
#ifndef FA_TILE_CANARY_H
#define FA_TILE_CANARY_H

/* 1 while the calling thread computes the canary's reference: the matrix
 * family is then off for it (fa_matrix_usable asks first). */
int fa_canary_matrix_off(void);

/* Whether the real tiles may run in this process: 1 in the canary's child,
 * 0 while computing its reference, else the process-wide decision, taken
 * on first use (this runs the canary once; concurrent first callers wait
 * for the one canary). */
int fa_tile_canary_ok(void);

/* After a failed decision: "the self-test of the tiles failed: <report>"
 * (static); NULL before the decision or after a pass. */
const char *fa_tile_canary_failure(void);

#endif /* FA_TILE_CANARY_H */
