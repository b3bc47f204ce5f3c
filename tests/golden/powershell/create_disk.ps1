# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}

$ImagingAction = 'create_disk'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Creates an empty, labelled NTFS data disk (GPT, one basic-data partition, no drive letter), the same
    # layout as imaging.vhdx.create_empty_volume. The provider holds the host's mount lock while this runs.
    # The disk is built under a .partial name and renamed at the end, so a crash never leaves a half-made
    # disk at the real path. An existing disk is never reformatted: if no VM holds it, its label is checked
    # and a different label is refused (it may hold persistent data).
    $Path = 'D:\Imaging\instruments\NDXZOOM\NDXZOOM-settings-7.vhdx'
    $SizeGb = [long]2
    $Label = 'Settings'
    $Role = 'settings'
    $BasicData = '{ebd0a0a2-b9e5-4433-87c0-68b6b72699c7}'
    if (@('settings', 'var', 'data') -notcontains $Role) { throw "create_disk makes settings, var or data disks, not '$Role'" }
    if (Test-Path -LiteralPath $Path -PathType Leaf) {
        $held = @(Get-VM | Get-VMHardDiskDrive | Where-Object { $_.Path -eq $Path })
        if ($held.Count -eq 0) {
            $disk = Mount-VHD -Path $Path -ReadOnly -NoDriveLetter -PassThru | Get-Disk
            try {
                $parts = @(Get-Partition -DiskNumber $disk.Number | Where-Object { $_.GptType -eq $BasicData })
                $found = $null
                if ($parts.Count -eq 1) { $found = (Get-Volume -Partition $parts[0]).FileSystemLabel }
            }
            finally {
                Dismount-VHD -Path $Path
            }
            if ($found -ne $Label) { throw "$Path already exists with volume label '$found', not '$Label'; refusing to touch it" }
        }
        $Result['how'] = 'already exists'
    }
    else {
        Initialize-ImagingFolder -Path (Split-Path -Path $Path -Parent)
        $Partial = "$Path.partial"
        if (Test-Path -LiteralPath $Partial) {
            try { Dismount-VHD -Path $Partial } catch { Write-Verbose "not mounted: $Partial" }
            Remove-Item -LiteralPath $Partial -Force
        }
        # Sizes are written out in bytes (1 GiB = 1073741824): the parser the tests use lacks the 1GB suffix.
        New-VHD -Path $Partial -SizeBytes ($SizeGb * 1073741824) -Dynamic | Out-Null
        $vhd = Mount-VHD -Path $Partial -NoDriveLetter -PassThru
        try {
            Initialize-Disk -Number $vhd.DiskNumber -PartitionStyle GPT
            $partition = New-Partition -DiskNumber $vhd.DiskNumber -UseMaximumSize -GptType $BasicData
            $partition | Set-Partition -NoDefaultDriveLetter $true
            Format-Volume -Partition $partition -FileSystem NTFS -NewFileSystemLabel $Label -Confirm:$false | Out-Null
        }
        finally {
            Dismount-VHD -Path $Partial
        }
        Move-Item -LiteralPath $Partial -Destination $Path
        $Result['changed'] = $true
        $Result['how'] = 'created'
    }
    $Result['path'] = $Path
    $Result['label'] = $Label
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
