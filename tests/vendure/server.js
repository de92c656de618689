// A real Vendure server for syncd's Vendure connector tests (tests/vendure_server.py boots it).
//
// Plain CommonJS, no TypeScript: `node server.js`. Configuration comes from the environment:
//   VENDURE_PORT                 the loopback port to listen on (required)
//   VENDURE_SUPERADMIN_PASSWORD  the superadmin's password (default "superadmin")
//   VENDURE_SESSION_DURATION     how long a session lives (default "1h")
// The database is sql.js in memory with `synchronize: true`: every boot starts empty, and the
// test fixture seeds what it needs through the Admin API. No AdminUiPlugin, no email, no asset
// server, no search plugin: only what the Admin and Shop APIs need.
//
// Authentication: bearer tokens (the `vendure-auth-token` response header of `login`) and API
// keys (the `vendure-api-key` request header, Vendure >= 3.6), both as a real deployment that
// syncd talks to would enable them.
//
// Payments: `syncd-test-payment`, a PaymentMethodHandler that settles at once, so a test can
// place a real order through the Shop API (addPaymentToOrder) without a payment provider.
'use strict';

process.env.VENDURE_DISABLE_TELEMETRY = 'true';

const {
    bootstrap,
    DefaultLogger,
    LanguageCode,
    LogLevel,
    PaymentMethodHandler,
} = require('@vendure/core');

const port = Number(process.env.VENDURE_PORT);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
    console.error('VENDURE_PORT must be a TCP port');
    process.exit(2);
}

const testPaymentHandler = new PaymentMethodHandler({
    code: 'syncd-test-payment',
    description: [{ languageCode: LanguageCode.en, value: 'Settles at once (tests only)' }],
    args: {},
    createPayment: (ctx, order, amount, args, metadata) => ({
        amount,
        state: 'Settled',
        transactionId: `syncd-test-${order.code}`,
        metadata: { public: { test: true } },
    }),
    settlePayment: () => ({ success: true }),
});

const config = {
    apiOptions: {
        hostname: '127.0.0.1',
        port,
        adminApiPath: 'admin-api',
        shopApiPath: 'shop-api',
        // the tests send their own channel token when they need another channel
        channelTokenKey: 'vendure-token',
    },
    authOptions: {
        tokenMethod: ['bearer', 'api-key'],
        requireVerification: false,
        sessionDuration: process.env.VENDURE_SESSION_DURATION || '1h',
        superadminCredentials: {
            identifier: 'superadmin',
            password: process.env.VENDURE_SUPERADMIN_PASSWORD || 'superadmin',
        },
    },
    dbConnectionOptions: {
        type: 'sqljs',
        synchronize: true,
        logging: false,
        autoSave: false,
    },
    paymentOptions: {
        paymentMethodHandlers: [testPaymentHandler],
    },
    logger: new DefaultLogger({ level: LogLevel.Warn }),
    plugins: [],
};

bootstrap(config)
    .then(app => {
        // one line the fixture may wait for (it polls the API anyway)
        console.log(`syncd-vendure-test-server ready on 127.0.0.1:${port}`);
        const stop = () => {
            app.close().then(
                () => process.exit(0),
                () => process.exit(1),
            );
        };
        process.on('SIGTERM', stop);
        process.on('SIGINT', stop);
    })
    .catch(err => {
        console.error(err && err.stack ? err.stack : err);
        process.exit(1);
    });
