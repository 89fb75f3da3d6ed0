// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title fedproof audit ledger
/// @notice Append-only lineage of a federated run: one record per round (model hash, parent hash, Merkle root of the
///         signed client updates, participant count, DP epsilon, bundle hash), the run's key statement (the
///         threshold key its holders generated, signed by each of them), one record per deployment, and one per
///         release statement (promotion, canary, rollback, retirement of a deployed artifact on a channel).
/// @dev Client signatures and updates stay off-chain; only their Merkle root is stored, so the cost of a round does not
///      depend on how many clients took part. Auditors should trust the events, receipts and block hashes: storage of a
///      dev chain can be rewritten (anvil_setStorageAt) without a new block, logs inside mined blocks cannot.
contract FedproofLedger {
    /// @notice The coordinator: the only account that may write.
    address public immutable owner;

    /// @dev Storage order differs from the getter's on purpose: timestamp shares a slot with numUpdates and
    ///      epsilonMaxScaled (32 + 64 + 64 bits), so a round costs five storage slots instead of six (one cold
    ///      SSTORE, ~20k gas, less). `rounds()` below returns the fields in the documented order.
    struct Round {
        bytes32 parentModelHash;
        bytes32 modelHash;
        bytes32 updatesMerkleRoot;
        uint32 numUpdates;
        uint64 epsilonMaxScaled;
        uint64 timestamp;
        bytes32 bundleHash;
    }

    /// @notice clientId => Ed25519 public key (32 bytes); zero means never registered.
    mapping(bytes32 => bytes32) public clientKeys;
    /// @notice clientId => revoked. A revoked client keeps its key (history stays checkable) but is not active.
    mapping(bytes32 => bool) public revoked;
    /// @dev runId => round => Round; read it through `rounds(runId, round)`.
    mapping(bytes32 => mapping(uint64 => Round)) private _rounds;
    /// @notice runId => last recorded round (0 = none).
    mapping(bytes32 => uint64) public latestRound;
    /// @notice runId => the model the run starts from (zero: the run was never started).
    mapping(bytes32 => bytes32) public initialModel;
    /// @notice artifactHash => recorded as a deployment of a recorded model (only those can be released).
    mapping(bytes32 => bool) public deployedArtifact;
    /// @notice The sequence number of the last release statement (0 = none); the next one must be one higher.
    uint64 public latestReleaseSequence;

    event ClientRegistered(bytes32 indexed clientId, bytes32 publicKey);
    event ClientRevoked(bytes32 indexed clientId);
    event RunStarted(bytes32 indexed runId, bytes32 indexed initialModelHash);
    event RoundRecorded(
        bytes32 indexed runId,
        uint64 indexed round,
        bytes32 indexed modelHash,
        bytes32 parentModelHash,
        bytes32 updatesMerkleRoot,
        uint32 numUpdates,
        uint64 epsilonMaxScaled,
        bytes32 bundleHash
    );
    /// @notice A run's key statement (t, the holders, the joint key's digest, the weight scale, the first round it
    ///         decrypts) and every holder's Ed25519 signature of it (64 bytes each, in holder order). ``keyId`` is the
    ///         statement's digest, as co-signatures of the run's models name it. The contract cannot check Ed25519
    ///         nor parse the statement; auditors and devices do, against the client keys registered here, and take
    ///         t and the holders from this event only, never from the server's round bundles.
    event KeyRecorded(bytes32 indexed runId, bytes32 indexed keyId, bytes statement, bytes signatures);
    event DeploymentRecorded(
        bytes32 indexed modelHash,
        bytes32 indexed artifactHash,
        bytes32 indexed runId,
        uint64 round,
        string target
    );

    /// @notice A release statement, as the operator's deployment key signed it (Ed25519, 64 bytes). The contract
    ///         cannot check Ed25519; devices and auditors do, against the operator key they pin, so the ledger
    ///         account alone cannot make a device switch models.
    event ReleaseRecorded(
        uint64 indexed sequence,
        bytes32 indexed artifactHash,
        bytes32 indexed channelHash,
        uint8 action,
        string channel,
        bytes32 previousArtifactHash,
        uint16 canaryBasisPoints,
        bytes signature
    );

    error NotOwner();
    error AlreadyRegistered(bytes32 clientId);
    error UnknownClient(bytes32 clientId);
    error RoundOutOfOrder(bytes32 runId, uint64 expected, uint64 got);
    error ParentMismatch(bytes32 expected, bytes32 got);
    error UnknownModel(bytes32 modelHash);
    error ZeroHash();
    error RunNotStarted(bytes32 runId);
    error RunAlreadyStarted(bytes32 runId);
    error ReleaseOutOfOrder(uint64 expected, uint64 got);
    error UnknownArtifact(bytes32 artifactHash);
    error BadRelease();
    error BadKeyStatement();

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner();
        _;
    }

    constructor() {
        owner = msg.sender;
    }

    /// @notice Register a client's Ed25519 key. A key is set once: re-registering (even after revocation) is
    ///         refused, so a clientId can never silently change keys.
    function registerClient(bytes32 clientId, bytes32 publicKey) external onlyOwner {
        if (publicKey == bytes32(0)) revert ZeroHash();
        if (clientKeys[clientId] != bytes32(0)) revert AlreadyRegistered(clientId);
        clientKeys[clientId] = publicKey;
        emit ClientRegistered(clientId, publicKey);
    }

    /// @notice Revoke a registered client; its key stays readable for audits of earlier rounds.
    function revokeClient(bytes32 clientId) external onlyOwner {
        if (clientKeys[clientId] == bytes32(0)) revert UnknownClient(clientId);
        revoked[clientId] = true;
        emit ClientRevoked(clientId);
    }

    /// @notice True if the client has a key and was not revoked.
    function isActiveClient(bytes32 clientId) external view returns (bool) {
        return clientKeys[clientId] != bytes32(0) && !revoked[clientId];
    }

    /// @notice Register the model a run starts from, once, before its first round: an audit walks a lineage back
    ///         to a registered initial model (or to another run's recorded model), never to an arbitrary hash.
    function startRun(bytes32 runId, bytes32 initialModelHash) external onlyOwner {
        if (initialModelHash == bytes32(0)) revert ZeroHash();
        if (initialModel[runId] != bytes32(0)) revert RunAlreadyStarted(runId);
        initialModel[runId] = initialModelHash;
        emit RunStarted(runId, initialModelHash);
    }

    /// @notice Record the key statement of a started run, as its holders signed it at the end of the key ceremony.
    ///         A run may record a new key later (its statement names the first round it decrypts); audits take the
    ///         latest valid statement recorded before a round, so a key recorded after a round cannot rewrite it.
    function recordKey(bytes32 runId, bytes32 keyId, bytes calldata statement, bytes calldata signatures)
        external
        onlyOwner
    {
        if (keyId == bytes32(0)) revert ZeroHash();
        if (initialModel[runId] == bytes32(0)) revert RunNotStarted(runId);
        if (statement.length == 0 || signatures.length == 0 || signatures.length % 64 != 0) revert BadKeyStatement();
        emit KeyRecorded(runId, keyId, statement, signatures);
    }

    /// @notice A recorded round (all zero if absent), in the order (parentModelHash, modelHash, updatesMerkleRoot,
    ///         numUpdates, epsilonMaxScaled, bundleHash, timestamp), as a public mapping getter would return it.
    function rounds(bytes32 runId, uint64 round)
        external
        view
        returns (
            bytes32 parentModelHash,
            bytes32 modelHash,
            bytes32 updatesMerkleRoot,
            uint32 numUpdates,
            uint64 epsilonMaxScaled,
            bytes32 bundleHash,
            uint64 timestamp
        )
    {
        Round storage r = _rounds[runId][round];
        return (
            r.parentModelHash,
            r.modelHash,
            r.updatesMerkleRoot,
            r.numUpdates,
            r.epsilonMaxScaled,
            r.bundleHash,
            r.timestamp
        );
    }

    /// @notice Record a finished round. Rounds of a run are recorded strictly in order (1, 2, 3, ...) and each
    ///         round's parent must be the previous round's model (round 1's: the run's registered initial model),
    ///         so the chain of records is the model lineage.
    function recordRound(
        bytes32 runId,
        uint64 round,
        bytes32 parentModelHash,
        bytes32 modelHash,
        bytes32 updatesMerkleRoot,
        uint32 numUpdates,
        uint64 epsilonMaxScaled,
        bytes32 bundleHash
    ) external onlyOwner {
        uint64 expected = latestRound[runId] + 1;
        if (round != expected) revert RoundOutOfOrder(runId, expected, round);
        if (modelHash == bytes32(0)) revert ZeroHash();
        bytes32 previous = round > 1 ? _rounds[runId][round - 1].modelHash : initialModel[runId];
        if (previous == bytes32(0)) revert RunNotStarted(runId);
        if (parentModelHash != previous) revert ParentMismatch(previous, parentModelHash);
        _rounds[runId][round] = Round({
            parentModelHash: parentModelHash,
            modelHash: modelHash,
            updatesMerkleRoot: updatesMerkleRoot,
            numUpdates: numUpdates,
            epsilonMaxScaled: epsilonMaxScaled,
            timestamp: uint64(block.timestamp),
            bundleHash: bundleHash
        });
        latestRound[runId] = round;
        emit RoundRecorded(
            runId, round, modelHash, parentModelHash, updatesMerkleRoot, numUpdates, epsilonMaxScaled, bundleHash
        );
    }

    /// @notice Record that a model of a recorded round was deployed (for example as a quantized edge artifact).
    function recordDeployment(
        bytes32 modelHash,
        bytes32 artifactHash,
        bytes32 runId,
        uint64 round,
        string calldata target
    ) external onlyOwner {
        if (modelHash == bytes32(0) || _rounds[runId][round].modelHash != modelHash) revert UnknownModel(modelHash);
        if (artifactHash == bytes32(0)) revert ZeroHash();
        deployedArtifact[artifactHash] = true;
        emit DeploymentRecorded(modelHash, artifactHash, runId, round, target);
    }

    /// @notice Record an operator-signed release statement: action 0 promotes ``artifactHash`` on ``channel`` (to
    ///         ``canaryBasisPoints`` of its devices, 10000 = all; the others keep ``previousArtifactHash``), 1 rolls
    ///         the channel back to it (withdrawing ``previousArtifactHash``), 2 retires it. Sequence numbers go
    ///         1, 2, 3, ...: a statement cannot be recorded twice or out of order, and no record can skip ahead to
    ///         block the ones after it.
    function recordRelease(
        uint64 sequence,
        uint8 action,
        string calldata channel,
        bytes32 artifactHash,
        bytes32 previousArtifactHash,
        uint16 canaryBasisPoints,
        bytes calldata signature
    ) external onlyOwner {
        if (sequence != latestReleaseSequence + 1) revert ReleaseOutOfOrder(latestReleaseSequence + 1, sequence);
        if (action > 2 || canaryBasisPoints == 0 || canaryBasisPoints > 10000 || signature.length != 64) {
            revert BadRelease();
        }
        if (bytes(channel).length == 0 || bytes(channel).length > 64) revert BadRelease();
        if (!deployedArtifact[artifactHash]) revert UnknownArtifact(artifactHash);
        if (previousArtifactHash != bytes32(0) && !deployedArtifact[previousArtifactHash]) {
            revert UnknownArtifact(previousArtifactHash);
        }
        latestReleaseSequence = sequence;
        emit ReleaseRecorded(
            sequence,
            artifactHash,
            keccak256(bytes(channel)),
            action,
            channel,
            previousArtifactHash,
            canaryBasisPoints,
            signature
        );
    }
}
