/** cluster-key-slot (ioredis's own dependency): the Redis Cluster hash slot of a key, hash tags included */
declare module 'cluster-key-slot' {
  export default function calculateSlot(key: string | Buffer): number;
}
