#pragma once
// ScaLAPACK/PBLAS/BLACS prototypes (Debian ships no header for them).
#include <mpi.h>

extern "C" {
int Csys2blacs_handle(MPI_Comm comm);
void Cfree_blacs_system_handle(int handle);
void Cblacs_gridinit(int* context, const char* order, int nprow, int npcol);
void Cblacs_gridinfo(int context, int* nprow, int* npcol, int* myrow, int* mycol);
void Cblacs_gridexit(int context);
void Cblacs_set(int context, int what, int* value);

int numroc_(const int* n, const int* nb, const int* iproc, const int* isrcproc, const int* nprocs);
void descinit_(int* desc, const int* m, const int* n, const int* mb, const int* nb, const int* irsrc, const int* icsrc,
               const int* ictxt, const int* lld, int* info);
void pdsyrk_(const char* uplo, const char* trans, const int* n, const int* k, const double* alpha, const double* a,
             const int* ia, const int* ja, const int* desca, const double* beta, double* c, const int* ic,
             const int* jc, const int* descc);
void pdgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
             const double* a, const int* ia, const int* ja, const int* desca, const double* b, const int* ib,
             const int* jb, const int* descb, const double* beta, double* c, const int* ic, const int* jc,
             const int* descc);
void pdsyevd_(const char* jobz, const char* uplo, const int* n, double* a, const int* ia, const int* ja,
              const int* desca, double* w, double* z, const int* iz, const int* jz, const int* descz, double* work,
              const int* lwork, int* iwork, const int* liwork, int* info);
void pdsytrd_(const char* uplo, const int* n, double* a, const int* ia, const int* ja, const int* desca, double* d,
              double* e, double* tau, double* work, const int* lwork, int* info);
void pdormtr_(const char* side, const char* uplo, const char* trans, const int* m, const int* n, const double* a,
              const int* ia, const int* ja, const int* desca, const double* tau, double* c, const int* ic,
              const int* jc, const int* descc, double* work, const int* lwork, int* info);
void psgesvd_(const char* jobu, const char* jobvt, const int* m, const int* n, float* a, const int* ia, const int* ja,
              const int* desca, float* s, float* u, const int* iu, const int* ju, const int* descu, float* vt,
              const int* ivt, const int* jvt, const int* descvt, float* work, const int* lwork, int* info);
}
