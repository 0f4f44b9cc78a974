/* airamp: NCCL tuner plugin ABI, version 5 (NCCL 2.28 .. 2.29). */
#ifndef AIRAMP_NCCL_TUNER_V5_H
#define AIRAMP_NCCL_TUNER_V5_H

#include "../nccl_types.h"

/* NVLink domain shape of the communicator. */
typedef struct {
  int nNvlDomains;          /* number of NVLink domains */
  int minRanksPerNvlDomain; /* smallest domain, in ranks */
  int maxRanksPerNvlDomain; /* largest domain, in ranks */
} ncclNvlDomainInfo_v5_t;

/* Dimensions of the constant tables, frozen for v5/v6. */
#define NCCL_NUM_ALGORITHMS_V5 7
#define NCCL_NUM_PROTOCOLS_V5 3
#define NCCL_NUM_HW_LINKS_V5 3
#define NCCL_NUM_COMPCAPS_V5 4
#define NCCL_NUM_TUNING_SCALES_V5 3

/* NCCL's built-in model constants; a tuner may overwrite them in init. */
typedef struct {
  double baseLatencies[NCCL_NUM_ALGORITHMS_V5][NCCL_NUM_PROTOCOLS_V5];
  double hwLatencies[NCCL_NUM_HW_LINKS_V5][NCCL_NUM_ALGORITHMS_V5][NCCL_NUM_PROTOCOLS_V5];
  double llMaxBws[NCCL_NUM_COMPCAPS_V5][NCCL_NUM_TUNING_SCALES_V5];
  double perChMaxRingLL128Bws[NCCL_NUM_COMPCAPS_V5][NCCL_NUM_TUNING_SCALES_V5];
  double perChMaxTreeLL128Bws[NCCL_NUM_COMPCAPS_V5][NCCL_NUM_TUNING_SCALES_V5];
  double perChMaxTreeBws[NCCL_NUM_COMPCAPS_V5][NCCL_NUM_TUNING_SCALES_V5];
  double perChMaxNVLSTreeBws[NCCL_NUM_COMPCAPS_V5][NCCL_NUM_TUNING_SCALES_V5];
} ncclTunerConstants_v5_t;

/* v4's getCollInfo; init now takes a context out-param, the comm id, NVLink
 * domain info and the constants table; destroy is renamed finalize. */
typedef struct {
  const char* name;
  ncclResult_t (*init)(void** ctx, uint64_t commId, size_t nRanks, size_t nNodes, ncclDebugLogger_t logFunction,
                       ncclNvlDomainInfo_v5_t* nvlDomainInfo, ncclTunerConstants_v5_t* constants);
  ncclResult_t (*getCollInfo)(void* context, ncclFunc_t collType, size_t nBytes, int numPipeOps, float** collCostTable,
                              int numAlgo, int numProto, int regBuff, int* nChannels);
  ncclResult_t (*finalize)(void* context);
} ncclTuner_v5_t;

#endif /* AIRAMP_NCCL_TUNER_V5_H */
