"""The streaming engine on Kafka.

- ``worker``    consume → decide → produce loop, rebalances, commits
- ``decode``    Kafka messages (one record, JSON Lines chunk, Arrow IPC) to batches
- ``shard``     one partition's batch decided against its stored state
- ``state``     per-person state in memory, mirrored to a compacted changelog
- ``state_file`` the state's local checkpoint file
- ``recovery``  taking a partition over: checks, fence, restore
- ``rebuild``   ``mynapoint admin rebuild-state``
- ``codec_out`` outcome messages
"""
