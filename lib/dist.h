/* dist.h: data-parallel processes. Who this process is in the job, how many
 * there are, and the few collectives a data-parallel trainer needs.
 *
 * A process started by an MPI launcher (mpirun/mpiexec: OMPI_COMM_WORLD_SIZE,
 * PMI_SIZE or PMIX_RANK in the environment; srun: SLURM_STEP_NUM_TASKS > 1)
 * joins the job with MPI_Init; any other process is a world of one and never
 * touches MPI (a singleton MPI_Init can be slow, or fail, in a container), and
 * every collective below is then a no-op.
 *
 * After dist_init a process that exits with a nonzero status before
 * dist_finalize (upc_fail, exit(n)) aborts the whole job (MPI_Abort), so one
 * failing rank never leaves the others waiting in a collective; upc_fail has
 * removed its temporary outputs by then.
 *
 * The implementation is MPI over host buffers (lib/dist.c). Collectives are
 * called from the main thread only (MPI_THREAD_FUNNELED). A GPU build can
 * implement dist_allreduce_sum for device buffers with NCCL behind the same
 * calls. */
#ifndef UPCYC_DIST_H
#define UPCYC_DIST_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { DIST_F32, DIST_F64, DIST_I64 } dist_type;

/* Join the job if a launcher started this process (see above). Fails
 * (EX_UNAVAILABLE) when MPI_Init fails or sees fewer processes than the
 * launcher announced (e.g. srun without --mpi=pmix). */
void dist_init(int *argc, char ***argv);
int dist_rank(void);              /* 0 .. dist_world() - 1 */
int dist_world(void);             /* 1 without a launcher */
bool dist_is_root(void);          /* rank 0: the one that writes */
/* A launcher started this process and it joined the job (then its stdout
 * may be the launcher's pseudo-terminal, whatever mpirun's own stdout is). */
bool dist_joined(void);

/* Sum n elements of buf over all ranks, in place, the same result on every
 * rank. */
void dist_allreduce_sum(void *buf, size_t n, dist_type t);
/* Element-wise maximum of n doubles over all ranks, in place. */
void dist_allreduce_max(double *buf, size_t n);
/* Copy n bytes of root's buf into every rank's buf. */
void dist_broadcast(void *buf, size_t n, int root);
void dist_barrier(void);

/* Leave the job (waits for every rank to get here). Call once, before a
 * normal exit, whatever its status. */
void dist_finalize(void);
/* End every process of the job with status code, now. */
void dist_abort(int code) __attribute__((noreturn));

#endif
