<?php
// A Laravel queue worker without a Laravel application: Illuminate\Queue booted with a
// Capsule manager (the Debian php-illuminate-* packages), draining one queue with the
// real Worker, as `php artisan queue:work --stop-when-empty` does. The job class below
// is the one docs/events.md asks a shop to add, reduced to writing what it received to
// a file (one JSON line per run) instead of dispatching the shop's OrderCompleted.
//
// Usage: php laravel_worker.php <settings.json>
//   {"driver": "database"|"redis", "queue": "default", "output": "/path/runs.jsonl",
//    "database": {Capsule connection array}, "table": "jobs",
//    "redis": {"host": "127.0.0.1", "port": 6379, "database": 0, "prefix": "laravel_database_"}}

namespace App\Jobs {
    final class RegularizedOrderCompleted
    {
        public function handle($job, array $data): void
        {
            $line = json_encode([
                'data' => $data,
                'attempts' => $job->attempts(),
                'uuid' => $job->uuid(),
                'queue' => $job->getQueue(),
                'name' => $job->resolveName(),
            ]);
            file_put_contents($GLOBALS['RUNS_FILE'], $line . "\n", FILE_APPEND | LOCK_EX);
            $job->delete();
        }
    }
}

namespace {
    foreach (['Support', 'Container', 'Events', 'Database', 'Queue', 'Redis', 'Bus'] as $component) {
        require_once "/usr/share/php/Illuminate/$component/autoload.php";
    }

    use Illuminate\Container\Container;
    use Illuminate\Contracts\Debug\ExceptionHandler;
    use Illuminate\Database\Capsule\Manager as Database;
    use Illuminate\Events\Dispatcher;
    use Illuminate\Queue\Capsule\Manager as Queue;
    use Illuminate\Queue\Worker;
    use Illuminate\Queue\WorkerOptions;
    use Illuminate\Redis\RedisManager;

    $settings = json_decode(file_get_contents($argv[1]), true, 512, JSON_THROW_ON_ERROR);
    $GLOBALS['RUNS_FILE'] = $settings['output'];
    $queueName = $settings['queue'] ?? 'default';

    $container = new Container();
    Container::setInstance($container);
    $events = new Dispatcher($container);
    $container->instance('events', $events);

    $queue = new Queue($container);
    if ($settings['driver'] === 'database') {
        $db = new Database($container);
        $db->addConnection($settings['database']);
        $container->instance('db', $db->getDatabaseManager());
        $queue->addConnection([
            'driver' => 'database',
            'table' => $settings['table'] ?? 'jobs',
            'queue' => $queueName,
            'retry_after' => 90,
        ], 'worker');
    } else {
        $redis = $settings['redis'];
        $container->instance('redis', new RedisManager($container, 'phpredis', [
            'default' => [
                'host' => $redis['host'], 'port' => $redis['port'],
                'database' => $redis['database'] ?? 0,
            ],
            'options' => ['prefix' => $redis['prefix'] ?? ''],
        ]));
        $queue->addConnection([
            'driver' => 'redis', 'connection' => 'default',
            'queue' => $queueName, 'retry_after' => 90, 'block_for' => null,
        ], 'worker');
    }

    $failures = [];
    $exceptions = new class($failures) implements ExceptionHandler {
        public function __construct(private array &$failures) {}
        public function report(Throwable $e) { $this->failures[] = get_class($e) . ': ' . $e->getMessage(); }
        public function shouldReport(Throwable $e) { return true; }
        public function render($request, Throwable $e) { throw $e; }
        public function renderForConsole($output, Throwable $e) {}
    };
    $worker = new Worker($queue->getQueueManager(), $events, $exceptions, fn () => false);
    $options = new WorkerOptions('default', 0, 128, 60, 0, $settings['max_tries'] ?? 3);

    $connection = $queue->getQueueManager()->connection('worker');
    $ran = 0;
    while ($connection->size($queueName) > 0 && $ran < 1000) {
        $worker->runNextJob('worker', $queueName, $options);
        $ran++;
    }
    fwrite(STDOUT, json_encode(['ran' => $ran, 'failures' => $failures]) . "\n");
    exit($failures ? 1 : 0);
}
